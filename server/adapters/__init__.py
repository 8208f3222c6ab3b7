"""LoRA adapters over the base model: which models a request may name, and adapters loaded at run time."""
