"""local_backward's gradient accumulation in one process, against autograd on the whole local batch: the sum of the
micro-batches' weighted losses has the same gradient, and the squared norm returned is that gradient's."""
import torch

from neptune_rt.schedule import local_backward, micro_weights


def test_a_parameter_only_earlier_micro_batches_reach_keeps_their_gradient():
    # w_rare enters the loss of samples 0-1 only: the last micro-batch (samples 2-3) gives it no gradient, so its
    # communication hook never fires; the earlier micro-batch's gradient must still end in .grad.
    torch.manual_seed(0)
    w, w_rare = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    x = torch.randn(4, 3)
    uses_rare = torch.tensor([1.0, 1.0, 0.0, 0.0])

    def loss(idx):
        out = x[idx] @ w
        if uses_rare[idx].any():  # not in the graph at all otherwise (a branch, as an MoE router or a gate takes)
            out = out + uses_rare[idx] * (x[idx] @ w_rare)
        return (out ** 2).mean()

    full = loss(torch.arange(4))
    want = torch.autograd.grad(full, [w, w_rare])
    parts = [torch.tensor([0, 1]), torch.tensor([2, 3])]
    weights = micro_weights([len(p) for p in parts])
    # Communication hooks (DistributedOptimizer's, DDP's) run when a gradient is accumulated during backward: one
    # that ran afterwards, writing .grad itself, would leave them out.
    hooked = []
    handle = w_rare.register_post_accumulate_grad_hook(lambda p: hooked.append(p.grad.clone()))
    sq = local_backward([w, w_rare], [lambda p=p, k=k: k * loss(p) for p, k in zip(parts, weights)])
    handle.remove()
    assert w_rare.grad is not None, "the gradient of a parameter the last micro-batch did not reach was lost"
    assert len(hooked) == 1 and torch.equal(hooked[0], w_rare.grad), "the communication hooks did not see it"
    for got, ref in zip((w.grad, w_rare.grad), want):
        assert torch.allclose(got, ref, rtol=1e-6, atol=1e-7), (got, ref)
    assert abs(sq - sum(float((g.double() ** 2).sum()) for g in want)) < 1e-6 * sq


def test_a_rank_with_no_samples_runs_nothing():
    # A short last batch can leave a rank without samples: the documented loop still calls local_backward.
    w = torch.randn(3, requires_grad=True)
    assert local_backward([w], []) == 0.0 and w.grad is None
    assert local_backward([w], [], measure_norm=False) == -1.0
