"""Embedded-world sweep model: 2 layers, d=256 (~2.5M params with the world tokenizer)."""
CONFIG = dict(model="tiny", model_overrides="num_layers=2,hidden_size=256,num_heads=8,num_kv_heads=2,"
                                           "intermediate_size=768")
