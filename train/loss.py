"""Weighted next-token cross-entropy from hidden states, without materializing all the logits.

`linear_cross_entropy(hidden, head_weight, targets, weights)` returns Σ weight·CE over tokens.
The vocabulary projection is done a chunk of tokens at a time: the forward pass computes each
chunk's loss and its gradients at once, so only one [chunk, vocab] block of logits is ever held
(SmolLM2's 49k vocabulary at 16k tokens a batch would otherwise take 3 GB in float32). On CUDA,
liger-kernel's fused Triton kernel does the same job when it is installed.
"""

from __future__ import annotations

import torch

CHUNK_TOKENS = 4096


def has_liger() -> bool:
    try:
        import liger_kernel.ops.fused_linear_cross_entropy  # noqa: F401
    except ImportError:
        return False
    return True


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Σ w·CE(h @ Wᵀ, y); gradients for h and W are computed in the forward pass, chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, head_weight, targets, weights, compute_dtype):
        h, w_head = hidden.to(compute_dtype), head_weight.to(compute_dtype)
        accumulate = torch.promote_types(compute_dtype, torch.float32)  # float32 for bf16 inputs
        grad_hidden = torch.empty_like(hidden)
        grad_head = torch.zeros_like(head_weight, dtype=accumulate)
        total = torch.zeros((), device=hidden.device, dtype=accumulate)
        for start in range(0, h.shape[0], CHUNK_TOKENS):
            end = min(start + CHUNK_TOKENS, h.shape[0])
            h_chunk, y, w = h[start:end], targets[start:end], weights[start:end]
            logits = (h_chunk @ w_head.T).to(accumulate)
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, y[:, None]).squeeze(1)) * w).sum()
            # d(lse - logit_y)/d logits = softmax - onehot, computed in the logits' own memory
            grad_logits = logits.sub_(lse[:, None]).exp_()
            grad_logits.scatter_add_(1, y[:, None], -torch.ones_like(lse)[:, None])
            grad_logits = grad_logits.mul_(w[:, None]).to(compute_dtype)
            grad_hidden[start:end] = (grad_logits @ w_head).to(hidden.dtype)
            grad_head += (grad_logits.T @ h_chunk).to(accumulate)
        ctx.save_for_backward(grad_hidden, grad_head.to(head_weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_head = ctx.saved_tensors
        return grad_hidden * grad_total, grad_head * grad_total, None, None, None


def chunked_loss_no_grad(hidden, head_weight, targets, weights, compute_dtype):
    total = torch.zeros((), device=hidden.device, dtype=torch.float32)
    w_head = head_weight.to(compute_dtype)
    for start in range(0, hidden.shape[0], CHUNK_TOKENS):
        end = min(start + CHUNK_TOKENS, hidden.shape[0])
        logits = (hidden[start:end].to(compute_dtype) @ w_head.T).float()
        losses = torch.nn.functional.cross_entropy(logits, targets[start:end], reduction="none")
        total += (losses * weights[start:end]).sum()
    return total


def liger_loss(hidden, head_weight, targets, weights, compute_dtype, binary_weights: bool):
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    h, w_head = hidden.to(compute_dtype), head_weight.to(compute_dtype)
    if binary_weights:  # 0/1 weights: ignored targets and a summed loss, the kernel's fastest path
        return LigerFusedLinearCrossEntropyLoss(reduction="sum")(w_head, h, targets.masked_fill(weights == 0, -100))
    return (LigerFusedLinearCrossEntropyLoss(reduction="none")(w_head, h, targets) * weights).sum()


def linear_cross_entropy(hidden, head_weight, targets, weights, *, binary_weights: bool = False,
                         use_liger: bool = False):
    """Σ over tokens of weight × CE(hidden @ head_weightᵀ, target); hidden is [tokens, d].

    `binary_weights` says every weight is 0 or 1 (lets liger use its summed path)."""
    compute_dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(
        hidden.device.type) else hidden.dtype
    with torch.autocast(hidden.device.type, enabled=False):
        if not torch.is_grad_enabled():
            return chunked_loss_no_grad(hidden, head_weight, targets, weights, compute_dtype)
        if use_liger:
            return liger_loss(hidden, head_weight, targets, weights, compute_dtype, binary_weights)
        return ChunkedLinearCrossEntropy.apply(hidden, head_weight, targets, weights, compute_dtype)


KD_CHUNK_TOKENS = 1024
NO_TEACHER = -1e4
"""Stand-in log-probability for padded top-k slots: exp(-1e4) is 0 in float32, and it stays finite."""


def topk_kd_loss(hidden, head_weight, teacher_ids, teacher_logprobs, weights):
    """Σ over tokens of weight × KL(teacher ‖ student), both renormalized over the teacher's top-k ids.

    hidden [N, d], head_weight [V, d], teacher_ids [N, K] (int), teacher_logprobs [N, K] (-inf or
    NaN in unused slots), weights [N] (0 where a token has no teacher distribution). The student's
    logits are computed only for the K teacher ids of each token (a [chunk, K, d] gather), so the
    loss is zero exactly when the student's distribution restricted to those ids equals the teacher's."""
    compute_dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(
        hidden.device.type) else hidden.dtype
    total = torch.zeros((), device=hidden.device, dtype=torch.float32)
    with torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, hidden.shape[0], KD_CHUNK_TOKENS):
            end = min(start + KD_CHUNK_TOKENS, hidden.shape[0])
            lp = teacher_logprobs[start:end].float()
            valid = torch.isfinite(lp)
            teacher = torch.log_softmax(torch.where(valid, lp, NO_TEACHER), dim=-1)
            rows = head_weight.to(compute_dtype)[teacher_ids[start:end]]          # [n, K, d]
            logits = torch.einsum("nd,nkd->nk", hidden[start:end].to(compute_dtype), rows).float()
            student = torch.log_softmax(torch.where(valid, logits, NO_TEACHER), dim=-1)
            kl = (teacher.exp() * (teacher - student)).sum(-1)
            total = total + (kl * weights[start:end].float()).sum()
    return total
