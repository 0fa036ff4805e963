"""Stage 1 of FuseChat as pipeline stages over files (each one a `fusechat` command).

``chat`` (chat datasets, templates, supervision masks), ``extract`` (top-K distributions of a
model over a dataset), ``store`` (the TopK store those stages read and write), ``align`` (align
a source store to the pivot's tokens and vocabulary), ``fuse`` (MinCE/AvgCE fusion of aligned
stores), ``split`` (the train/gold/held-out split a recipe uses), ``train`` (fine-tune the
pivot with the fusion loss), ``evaluate`` / ``replies`` / ``stats`` (score models on held-out
questions, with bootstrap intervals). The array functions these stages call are the public
modules one level up (``fusechat.align``, ``fusechat.fuse``, ``fusechat.loss``,
``fusechat.torch``); ``fusechat.recipe`` runs the stages in order from one YAML file.
"""
