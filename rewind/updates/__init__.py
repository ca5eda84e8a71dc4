"""What a finetune did to one base tensor, in the method's own parameterization: one module per update kind.

Each module owns one peft adapter format, whole: its `Delta` classes (W1 by peft's formula, the shape they fit), its
reader (a module's peft tensors -> Deltas), the adapter_config.json fields it reads, how a point of its natural path
is written back as an adapter of the same format, and any path of its own. `base.py` says what a kind provides;
`rewind/methods.py` names the kind of each method.
"""
