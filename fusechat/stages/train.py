"""Stage 1d: fine-tune the pivot on gold CE plus CE against a sparse target from a TopK store.

``train(pivot_model, store, out)`` reads a fused (or, for self-distillation, extracted) TopK
store made with the pivot's tokenizer, and trains the pivot with ``FusionTrainer``, a
``transformers.Trainer`` whose loss is fusechat's fused sparse kernel::

    loss = lm_weight * CE(gold) + (1 - lm_weight) * CE(target renormalised over its <= K entries)

averaged over the supervised tokens of the (accumulated, global) batch, as HF's own causal-LM
loss is. ``FusionCollator`` pads the store's samples and passes the target as [B, L, K] ids
(-1 padded) and logits: no vocabulary-sized target is ever built. ``lm_weight=1`` is plain
CE on the same rows: the paper's SFT baseline. The trained model and tokenizer are saved as
a Hugging Face folder that appears at ``out`` only when complete.

Multi-GPU: the Trainer runs under torchrun/accelerate with DDP, FSDP or DeepSpeed
(``training_args=`` passes any ``TrainingArguments``; docs/pipeline.md has launch lines).
"""
import json
import logging
import os
import shutil

import numpy as np

from ..errors import FormatError
from ..loss import LM_WEIGHT
from .store import open_store

LOG = logging.getLogger(__name__)

try:
    import torch
    from transformers import Trainer
except ImportError:  # torch/transformers are the [torch] extra; fusechat imports without them
    torch = Trainer = None


class FusionCollator:
    """Collates TopK store samples (``fusechat.stages.store.Sample``) into a batch for a causal LM:
    input_ids and attention_mask [B, L] (right padding with ``pad_id``), labels [B, L]
    (-100 where not supervised and on padding), target_ids int32 [B, L, K] (-1 on padding
    and empty rows) and target_values float32 [B, L, K]. Position t's target predicts token
    t + 1, like the model's logits at t."""

    def __init__(self, pad_id, k, max_length=None):
        self.pad_id, self.k, self.max_length = int(pad_id), int(k), max_length

    def __call__(self, samples):
        n = [len(s.input_ids) if self.max_length is None else min(len(s.input_ids), self.max_length)
             for s in samples]
        b, width, k = len(samples), max(n), self.k
        ids = np.full((b, width), self.pad_id, dtype=np.int64)
        attn = np.zeros((b, width), dtype=np.int64)
        labels = np.full((b, width), -100, dtype=np.int64)
        tids = np.full((b, width, k), -1, dtype=np.int32)
        tvals = np.zeros((b, width, k), dtype=np.float32)
        for r, (s, t) in enumerate(zip(samples, n)):
            ids[r, :t] = s.input_ids[:t]
            attn[r, :t] = 1
            labels[r, :t] = np.where(s.loss_mask[:t] != 0, s.input_ids[:t], -100)
            tids[r, :t] = s.topk_ids[:t]
            tvals[r, :t] = s.topk_logits[:t]
        tvals[tids < 0] = 0.0  # padded entries carry no value (NaN/inf there is never read)
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attn),
                "labels": torch.from_numpy(labels), "target_ids": torch.from_numpy(tids),
                "target_values": torch.from_numpy(tvals)}


class StoreDataset:
    """A TopK store as a map-style dataset of samples (for the Trainer's sampler)."""

    def __init__(self, store):
        self.store = store

    def __len__(self):
        return len(self.store)

    def __getitem__(self, i):
        return self.store[int(i)]


class FusionTrainer(Trainer if Trainer is not None else object):
    """``transformers.Trainer`` with FuseChat's loss (``fusechat.torch.causal_lm_fusion_loss``).

    ``lm_weight`` (default ``fusechat.loss.LM_WEIGHT``, FuseChat's ``lm_loss_weight``), ``temperature`` (applied to
    the target) and ``kind`` ("ce" or "kl") set the loss. Batches carry ``target_ids`` and
    ``target_values`` (see FusionCollator); without them the loss is plain CE. The loss is
    normalised by the Trainer's global count of supervised tokens (``num_items_in_batch``),
    so gradient accumulation and data parallelism give the same gradients as one big batch.
    """

    def __init__(self, *args, lm_weight=LM_WEIGHT, temperature=1.0, kind="ce", **kwargs):
        from ..loss import loss_options

        if not 0.0 <= float(lm_weight) <= 1.0:
            raise ValueError(f"lm_weight={lm_weight}: must lie in [0, 1]")
        if not float(temperature) > 0.0:
            raise ValueError(f"temperature={temperature}: must be > 0")
        loss_options(lm_weight, temperature, kind)  # check the options before any work
        super().__init__(*args, **kwargs)
        self.lm_weight, self.temperature, self.kind = float(lm_weight), temperature, kind
        # make the Trainer count the supervised tokens of the accumulated batch, and take our
        # loss as already normalised by that count
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from ..torch import causal_lm_fusion_loss

        inputs = dict(inputs)
        labels = inputs.pop("labels")
        tids, tvals = inputs.pop("target_ids", None), inputs.pop("target_values", None)
        outputs = model(**inputs)
        loss = causal_lm_fusion_loss(outputs.logits, labels, tids, tvals,
                                     lm_weight=self.lm_weight, temperature=self.temperature,
                                     kind=self.kind, num_items_in_batch=num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # the count is global: undo the data-parallel average of the gradients (as HF's
            # own loss does)
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss


def _pivot_tokenizer(pivot_model, tokenizer):
    from transformers import AutoTokenizer

    if tokenizer is None:
        if not isinstance(pivot_model, (str, os.PathLike)):
            raise ValueError("tokenizer= is needed when the pivot model is given as an object")
        tokenizer = pivot_model
    if isinstance(tokenizer, (str, os.PathLike)):
        if not os.path.isdir(tokenizer):
            raise FileNotFoundError(f"{os.fspath(tokenizer)}: not a model/tokenizer folder")
        tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer))
    return tokenizer


def _pivot_model(pivot_model):
    from transformers import AutoModelForCausalLM

    if isinstance(pivot_model, (str, os.PathLike)):
        # loaded in its stored dtype: bf16=True is mixed precision (autocast); the weights
        # and the optimizer state stay as they are
        return AutoModelForCausalLM.from_pretrained(os.fspath(pivot_model))
    return pivot_model


def training_arguments(work, *, epochs, lr, batch_size, grad_accum, max_steps, seed, bf16,
                       device, quiet, extra):
    """The TrainingArguments train() uses (the reference's defaults: cosine schedule,
    warmup 3%, no weight decay, AdamW); ``extra`` overrides any of them (fsdp, deepspeed,
    gradient_checkpointing, ...)."""
    from transformers import TrainingArguments

    args = dict(output_dir=work, num_train_epochs=epochs, learning_rate=lr,
                per_device_train_batch_size=batch_size, gradient_accumulation_steps=grad_accum,
                max_steps=-1 if max_steps is None else int(max_steps), seed=seed,
                lr_scheduler_type="cosine", warmup_steps=0.03, weight_decay=0.0,
                optim="adamw_torch", bf16=bf16, use_cpu=(device == "cpu"),
                remove_unused_columns=False, save_strategy="epoch", save_total_limit=1,
                logging_steps=10, report_to=[], disable_tqdm=quiet,
                dataloader_pin_memory=(device != "cpu"),
                # causal LMs use every parameter in each step: skip DDP's extra graph walk
                ddp_find_unused_parameters=False)
    args.update(extra or {})
    return TrainingArguments(**args)


def train(pivot_model, fused_store, out, *, tokenizer=None, lm_weight=LM_WEIGHT, temperature=1.0,
          kind="ce", epochs=3, lr=5e-6, batch_size=4, grad_accum=4, max_steps=None, seed=42,
          bf16=False, device=None, max_length=None, overwrite=False, quiet=False,
          training_args=None):
    """Fine-tune ``pivot_model`` (HF folder or loaded model + ``tokenizer``) on a TopK store
    made with its tokenizer, and save model + tokenizer to ``out`` (a Hugging Face folder,
    renamed into place when complete). Returns ``out``.

    Checkpoints go to ``out.partial/`` each epoch; a rerun resumes from the last one. An
    existing ``out`` is kept (and returned) unless ``overwrite``.
    """
    if torch is None:
        raise ImportError("fusechat.stages.train needs torch and transformers (pip install fusechat[torch])")
    out = os.fspath(out)
    store = open_store(fused_store)
    try:
        settings = _settings(pivot_model, fused_store, store.manifest, lm_weight=lm_weight,
                             temperature=temperature, kind=kind, epochs=epochs, lr=lr,
                             batch_size=batch_size, grad_accum=grad_accum, max_steps=max_steps,
                             seed=seed, bf16=bf16, max_length=max_length,
                             training_args=training_args)
        if os.path.exists(out) and not overwrite:
            if os.path.exists(os.path.join(out, "config.json")):
                _check_settings(out, settings, what=f"{out}: already trained", skip=())
                LOG.info("%s: already trained with these settings, skipped", out)
                return out
            raise FileExistsError(f"{out}: exists and is not a model folder (pass overwrite=True)")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = _pivot_tokenizer(pivot_model, tokenizer)
        from .extract import tokenizer_fingerprint

        fp = tokenizer_fingerprint(tokenizer)
        if store.fingerprint != fp:
            raise FormatError(
                f"{fused_store}: the store was made with tokenizer {store.fingerprint[:16]}... "
                f"(model {store.model!r}), but the pivot's tokenizer is {fp[:16]}...: the "
                "target ids would mean other tokens (align the store to the pivot first)")
        if len(store) == 0:
            raise FormatError(f"{fused_store}: the store has no samples")
        pad_id = next(x for x in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0)
                      if x is not None)
        model = _pivot_model(pivot_model)  # only once the store is known to fit it
        work = out + ".partial"
        if overwrite and int(os.environ.get("RANK", "0")) == 0:
            shutil.rmtree(work, ignore_errors=True)
        args = training_arguments(work, epochs=epochs, lr=lr, batch_size=batch_size,
                                  grad_accum=grad_accum, max_steps=max_steps, seed=seed,
                                  bf16=bf16, device=device, quiet=quiet, extra=training_args)
        trainer = FusionTrainer(model=model, args=args, train_dataset=StoreDataset(store),
                                data_collator=FusionCollator(pad_id, store.k, max_length),
                                processing_class=tokenizer, lm_weight=lm_weight,
                                temperature=temperature, kind=kind)
        if quiet:  # with no progress bar, HF prints every log dict instead
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        trainer.accelerator.wait_for_everyone()  # rank 0 has cleared OUT.partial
        resume = _last_checkpoint(work)
        if resume:
            # a longer run (epochs, max_steps) may continue a checkpoint; other changes may not
            _check_settings(work, settings, what=f"{work}: a checkpoint",
                            skip=("epochs", "max_steps"))
            LOG.info("resuming from %s", resume)
        if trainer.args.should_save:
            _write_settings(work, settings)
        trainer.train(resume_from_checkpoint=resume)
        final = os.path.join(work, "final")
        trainer.save_model(final)
        if trainer.args.should_save:
            _write_settings(final, settings)
            _publish(final, out, overwrite)
            shutil.rmtree(work, ignore_errors=True)
        trainer.accelerator.wait_for_everyone()
    finally:
        store.close()
    return out


SETTINGS_FILE = "fusechat_train.json"


def _settings(pivot_model, fused_store, manifest, **options):
    """What defines a training run's result: the pivot, the store and every option."""
    if isinstance(pivot_model, (str, os.PathLike)):
        pivot = os.path.abspath(os.fspath(pivot_model))
    else:  # a loaded model: its origin is the best name it has
        pivot = getattr(getattr(pivot_model, "config", None), "_name_or_path", "") or "(in memory)"
    store_id = {"path": os.path.abspath(os.fspath(fused_store)),
                **{k: manifest.get(k) for k in ("tokenizer_fingerprint", "n_samples", "n_tokens")}}
    return json.loads(json.dumps({"pivot": pivot, "store": store_id, **options}, default=str))


def _write_settings(folder, settings):
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, SETTINGS_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(folder, SETTINGS_FILE))


def _check_settings(folder, settings, *, what, skip):
    """FileExistsError naming every setting that differs from the run recorded in ``folder``
    (a folder without a record, e.g. from an older fusechat, is accepted as it is)."""
    path = os.path.join(folder, SETTINGS_FILE)
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    diff = [k for k in sorted(set(old) | set(settings))
            if k not in skip and old.get(k) != settings.get(k)]
    if diff:
        detail = "; ".join(f"{k}: {old.get(k)!r} then, {settings.get(k)!r} now" for k in diff)
        raise FileExistsError(f"{what} with other settings ({detail}): pass overwrite=True "
                              "(CLI --overwrite) to train again, or choose another output")


def _last_checkpoint(work):
    if not os.path.isdir(work):
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(work)


def _publish(final, out, overwrite):
    """Rename the finished folder to ``out`` (replacing an old one only with overwrite)."""
    if os.path.exists(out):
        if not overwrite:
            raise FileExistsError(f"{out}: appeared while training; not overwritten")
        old = f"{out}.old-{os.getpid()}"
        os.rename(out, old)
        os.rename(final, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(final, out)
