"""Embedded-world model one size up: 8 layers, d=512 (~26M params with the world tokenizer)."""
CONFIG = dict(model="tiny", model_overrides="num_layers=8,hidden_size=512,num_heads=8,num_kv_heads=2,"
                                           "intermediate_size=1536")
