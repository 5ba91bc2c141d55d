"""Embedded-world sweep model: 4 layers, d=256 (~4.2M params with the world tokenizer)."""
CONFIG = dict(model="tiny", model_overrides="num_layers=4,hidden_size=256,num_heads=8,num_kv_heads=2,"
                                           "intermediate_size=768")
