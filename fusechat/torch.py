"""The fusion loss for PyTorch: an autograd Function and an ``nn.Module`` over the C/CUDA kernel.

torch is optional: ``import fusechat`` never imports it; this module does, when imported.
Tensors reach the kernels through DLPack (no torch headers or libraries are linked): CPU
tensors go to ``fusechat._C``, CUDA tensors to ``fusechat._C_cuda``. The forward computes the
loss and the gradient in one fused pass and keeps the gradient (one [N, V] tensor in the
logits' dtype, or none with ``inplace=True``, which writes it over the logits); backward only
scales it by the upstream gradient.

Distributed training (DDP, FSDP, DeepSpeed): the loss is a pure function of the rank's own
rows, with no collective inside. ``reduction="mean"`` averages over the rank's supervised
rows; to average over the global batch (and over gradient-accumulation steps), pass
``normalizer=`` the global count of supervised tokens (as HF's ``num_items_in_batch``) and
let the data-parallel all-reduce sum the gradients (scale by the world size if your
framework averages them).
"""
import torch

from . import _backend
from ._loss_common import (LM_WEIGHT, check_k, loss_options, shift_labels_into,
                           sparse_present, sparse_rows, topk_buffers, topk_result)

__all__ = ["LM_WEIGHT", "FusionLoss", "fusion_loss", "causal_lm_fusion_loss", "hf_shift_labels",
           "topk_and_ce", "check_errors"]


def _kernel_module(t):
    if t.device.type == "cpu":
        from . import _C
        return _C
    if t.device.type == "cuda":
        if _backend.backend() == "cpu":
            raise _backend.CudaError("FUSECHAT_BACKEND=cpu but the logits are on a CUDA device")
        return _backend.cuda_module()
    raise ValueError(f"logits on device {t.device}: fusechat runs on CPU and CUDA tensors")


def _sparse(ids, values, n, name, device):
    if not sparse_present(ids, values, name):
        return None, None
    rows, k = sparse_rows(ids.shape, values.shape, n, name)
    ids = ids.detach().reshape(rows, k)
    if ids.dtype != torch.int32:
        limit = torch.iinfo(torch.int32)
        outside = (ids < limit.min) | (ids > limit.max)
        if ids.device.type == "cpu":
            if ids.numel() and bool(outside.any()):
                raise ValueError(f"fusion_loss: {name}_ids has ids outside the int32 range")
        else:  # no host synchronisation: such ids become INT32_MAX, which validation reports
            ids = ids.masked_fill(outside, limit.max)
        ids = ids.to(torch.int32)
    return (ids.to(device).contiguous(),
            values.detach().reshape(rows, k).to(device=device, dtype=torch.float32).contiguous())


class _FusionLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, target, fallback, opts, inplace):
        z = logits.detach()
        if inplace and not z.is_contiguous():
            raise ValueError("inplace=True needs contiguous logits")
        z = z.contiguous().reshape(-1, z.shape[-1])
        n = z.shape[0]
        y = labels.detach().reshape(-1).to(device=z.device, dtype=torch.int64).contiguous()
        if y.shape[0] != n:
            raise ValueError(f"labels has {y.shape[0]} entries, logits have {n} rows")
        tids, tvals = _sparse(*target, n, "target", z.device)
        fids, fvals = _sparse(*fallback, n, "fallback", z.device)
        need_grad = ctx.needs_input_grad[0]
        grad = (z if inplace else torch.empty_like(z)) if need_grad else None
        cpu = z.device.type == "cpu"
        row_loss = torch.empty(n, dtype=torch.float64 if cpu else torch.float32, device=z.device)
        mod = _kernel_module(z)
        ctx.applied = None
        if z.device.type == "cuda":
            total = torch.empty(1, dtype=torch.float32, device=z.device)
            with torch.cuda.device(z.device):  # the stream of the logits' device
                stream = torch.cuda.current_stream().cuda_stream
                mod.fusion_loss(z, y, tids, tvals, fids, fvals, grad, row_loss, total=total,
                                stream=stream, **opts)
            loss = total[0]
            if grad is not None:  # the upstream-gradient factor already in each row of grad
                ctx.applied = torch.ones(n, dtype=torch.float32, device=z.device)
        else:
            value, _ = mod.fusion_loss(z, y, tids, tvals, fids, fvals, grad, row_loss, **opts)
            loss = torch.tensor(value, dtype=torch.float64 if z.dtype == torch.float64
                                else torch.float32)
        ctx.none = opts["reduction"] == 2
        ctx.shape = logits.shape
        ctx.save_for_backward(grad)
        if ctx.none:
            return row_loss if z.dtype == torch.float64 else row_loss.to(torch.float32)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        if grad is None:
            return (None,) * 6
        if grad.device.type == "cuda":
            # scaled in place by a kernel that leaves rows whose factor is already in them
            # (an upstream gradient of 1: no pass at all) and records the factor, so that a
            # second backward (retain_graph) gives the same gradient; no host synchronisation
            gout = grad_out.detach().reshape(-1).to(torch.float32).contiguous()
            with torch.cuda.device(grad.device):
                _backend.cuda_module().scale_grad(grad, gout, ctx.applied,
                                                  torch.cuda.current_stream().cuda_stream)
            return grad.reshape(ctx.shape), None, None, None, None, None
        # CPU: scaled out of place (the saved gradient must survive repeated backward passes:
        # retain_graph, gradcheck); an upstream gradient of exactly 1 costs nothing
        if ctx.none:  # the kernel gave d(sum of rows)/dz: scale each row by its upstream grad
            grad = grad * grad_out.reshape(-1, 1).to(grad.dtype)
        elif float(grad_out) != 1.0:
            grad = grad * grad_out.to(grad.dtype)
        return grad.reshape(ctx.shape), None, None, None, None, None


def fusion_loss(logits, labels, target_ids=None, target_values=None, *, fallback_ids=None,
                fallback_values=None, lm_weight=LM_WEIGHT, temperature=1.0, kind="ce",
                reduction="mean", normalizer=None, ignore_index=-100, validate=True,
                inplace=False, threads=0):
    """FuseChat's loss on torch tensors (CPU or CUDA), differentiable w.r.t. ``logits``.

    logits [..., V] float32/float16/bfloat16 (float64 on CPU, for gradcheck); labels [...]
    (the token each row predicts, or ignore_index); target_ids/target_values [..., K] (ids
    padded with -1; values are logits, renormalised over each row's entries at
    ``temperature``); fallback_* [..., K2] for rows whose target is empty (else the gold
    one-hot). See :func:`fusechat.loss.fusion_loss` for the formula and the options.
    ``inplace=True`` overwrites the logits with the gradient (saves one [N, V] buffer; only
    when nothing else needs the logits afterwards). Returns a 0-d tensor, or [N] per-row
    losses for reduction="none".

    ``validate``: True checks labels, target ids and values. On CUDA the check runs on the
    device and bad input is raised by a later call (or by :func:`check_errors`), naming the
    call, argument, row and entry; nothing waits for the GPU, so the call can be captured in
    a CUDA graph. ``"strict"`` checks on the host before the kernel runs (the error comes
    from this call; costs a device synchronisation). False checks nothing on CUDA (bad
    labels count as ignored, bad ids as padding) and only the ranges on the CPU.
    """
    opts = loss_options(lm_weight, temperature, kind, reduction, normalizer, ignore_index,
                        validate, threads)
    return _FusionLossFunction.apply(logits, labels, (target_ids, target_values),
                                     (fallback_ids, fallback_values), opts, bool(inplace))


def check_errors(device=None):
    """Raise ValueError if :func:`fusion_loss` calls on a CUDA device (default: the current
    one) met bad labels or targets since the last report; waits for the device. Call it
    where a synchronisation is cheap (every N steps, at logging time, after CUDA graph
    replays): with ``validate=True`` the same error otherwise surfaces a call or two after
    the call that had it."""
    dev = torch.device("cuda", device) if isinstance(device, int) else \
        torch.device(device or "cuda")
    _backend.cuda_module().loss_errors(torch.cuda.current_device() if dev.index is None
                                       else dev.index)


def hf_shift_labels(labels, ignore_index=-100):
    """transformers' causal-LM shift without moving the logits: position t is labelled with
    the token at t+1 and the last position of each sequence with ignore_index (the same
    rows as ``logits[..., :-1, :]`` against ``labels[..., 1:]``, as ForCausalLMLoss does)."""
    return shift_labels_into(labels, torch.full_like(labels, ignore_index))


def causal_lm_fusion_loss(logits, labels, target_ids=None, target_values=None, *,
                          num_items_in_batch=None, **kwargs):
    """The loss on HF-shaped tensors: logits [B, L, V], labels [B, L] as given to a causal LM
    (unshifted), targets [B, L, K] where position t's target predicts token t+1 (as stored by
    extraction). Does the next-token shift the way transformers does; the last position of
    each sequence gets no loss and a zero gradient. ``num_items_in_batch`` (HF Trainer's
    global count of supervised tokens) becomes the normalizer."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"expected logits [B, L, V] and labels [B, L], got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    ignore_index = kwargs.get("ignore_index", -100)
    shifted = hf_shift_labels(labels.to(logits.device), ignore_index)
    if num_items_in_batch is not None:
        kwargs["normalizer"] = float(num_items_in_batch)
    return fusion_loss(logits, shifted, target_ids, target_values, **kwargs)


class FusionLoss(torch.nn.Module):
    """``nn.Module`` form: ``FusionLoss(lm_weight=LM_WEIGHT)(logits, labels, target_ids,
    target_values)``. Holds the options; see :func:`fusion_loss`."""

    def __init__(self, lm_weight=LM_WEIGHT, temperature=1.0, kind="ce", reduction="mean",
                 ignore_index=-100, validate=True, inplace=False):
        super().__init__()
        loss_options(lm_weight, temperature, kind, reduction, None, ignore_index)  # check early
        self.lm_weight, self.temperature, self.kind = lm_weight, temperature, kind
        self.reduction, self.ignore_index = reduction, ignore_index
        self.validate, self.inplace = validate, inplace

    def forward(self, logits, labels, target_ids=None, target_values=None, fallback_ids=None,
                fallback_values=None, normalizer=None):
        return fusion_loss(logits, labels, target_ids, target_values, fallback_ids=fallback_ids,
                           fallback_values=fallback_values, lm_weight=self.lm_weight,
                           temperature=self.temperature, kind=self.kind,
                           reduction=self.reduction, normalizer=normalizer,
                           ignore_index=self.ignore_index, validate=self.validate,
                           inplace=self.inplace)

    def extra_repr(self):
        return (f"lm_weight={self.lm_weight}, temperature={self.temperature}, "
                f"kind={self.kind!r}, reduction={self.reduction!r}")



@torch.no_grad()
def topk_and_ce(logits, labels=None, k=10, *, seq_offsets=None, shift=False, ignore_index=-100,
                threads=0):
    """:func:`fusechat.loss.topk_and_ce` on torch tensors (CPU or CUDA, k <= 64 on CUDA):
    top-k ids (int32) and logits (float32) per row, sorted descending with ties to the lower
    id, the token CE and the per-sequence CE with its "has a supervised token" flag, in one
    pass over the logits. Returns a :class:`fusechat.loss.TopK` of tensors on the logits'
    device."""
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits must be [N, V] or [B, L, V], got {tuple(logits.shape)}")
    dev = logits.device
    lead = logits.shape[:-1]
    z = logits.detach().contiguous().reshape(-1, logits.shape[-1])
    n = z.shape[0]
    k = check_k(k, z.shape[1])
    y = None
    if labels is not None:
        labels = labels.to(dev)
        if shift:
            labels = hf_shift_labels(labels, ignore_index)
        y = labels.reshape(-1).to(torch.int64).contiguous()
        if y.shape[0] != n:
            raise ValueError(f"labels has {y.shape[0]} entries, logits have {n} rows")
        if seq_offsets is None and logits.dim() == 3:
            seq_offsets = torch.arange(lead[0] + 1, dtype=torch.int64) * lead[1]
    so = None
    if seq_offsets is not None:
        if y is None:
            raise ValueError("seq_offsets needs labels")
        so = torch.as_tensor(seq_offsets, dtype=torch.int64).cpu()
        if so.dim() != 1 or so.numel() < 1 or so[0] != 0 or so[-1] != n or \
                bool((so[1:] < so[:-1]).any()):
            raise ValueError(f"seq_offsets must rise from 0 to N = {n}")
        so = so.to(dev).contiguous()
    s = 0 if so is None else so.shape[0] - 1
    out = topk_buffers(lambda shape, dtype: torch.empty(shape, dtype=getattr(torch, dtype),
                                                        device=dev),
                       n, k, s, y is not None, so is not None)
    mod = _kernel_module(z)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            mod.topk_ce(z, y, k, int(ignore_index), so, *out,
                        torch.cuda.current_stream().cuda_stream)
    else:
        mod.topk_ce(z, y, k, int(ignore_index), so, *out, threads)
    return topk_result(*out, lead, k)
