"""Fine-tuning a model on its own instruction data (the paper's alignment step), locally.

Importing this package is cheap: torch and transformers load only when training starts.

- config:     FinetuneConfig (the `finetune` config group) and validate_finetune
- base_model: the embedded Gemma 3 270M as an HF folder (converted once), device and precision
- data:       prompt/completion pairs -> token ids with completion-only labels; the collator
- local:      finetune_local(), the Trainer with the completion-only output layer, resume
- gguf_adapter: the PEFT adapter as a GGUF LoRA file for llama.cpp
- generate:   answering prompts with transformers (HF folder + optional adapter)
"""
