import torch

from semid.model.tokenizers.quantizer import ResidualQuantizer


def test_encode_decode_reduces_error_with_each_level():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 6, generator=g)
    rq = ResidualQuantizer(levels=3, codebook_size=16, dim=6)
    rq.init_from_data(z, iters=10, seed=0)
    codes, dists, _ = rq.encode(z)
    errors = [float(((z - rq.decode(codes[:, : lv + 1])) ** 2).sum(1).mean()) for lv in range(3)]
    assert errors[0] > errors[1] > errors[2]
    # the last distance is exactly the final reconstruction error
    assert torch.allclose(dists[:, -1], ((z - rq.decode(codes)) ** 2).sum(1), atol=1e-4)


def test_alternatives_are_ranked_and_start_with_the_code():
    z = torch.randn(200, 4, generator=torch.Generator().manual_seed(1))
    rq = ResidualQuantizer(levels=2, codebook_size=8, dim=4)
    rq.init_from_data(z, iters=5, seed=0)
    codes, _, alt = rq.encode(z, alternatives=5)
    assert alt.shape == (200, 5)
    assert torch.equal(alt[:, 0], codes[:, -1])
    assert all(len(set(row)) == 5 for row in alt.tolist())


def test_straight_through_passes_gradient_to_the_input():
    rq = ResidualQuantizer(levels=2, codebook_size=4, dim=3)
    z = torch.randn(10, 3, requires_grad=True)
    rq.train()
    out = rq(z)
    out.quantized.sum().backward()
    assert z.grad is not None and torch.allclose(z.grad, torch.ones_like(z))
    assert float(out.commit_loss) > 0


def test_dead_codes_are_reset_to_data_points():
    rq = ResidualQuantizer(levels=1, codebook_size=8, dim=2)
    rq.train()
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(2))
    rq.codebooks.data[0] = 100.0  # every code far away: only one gets used
    rq.codebooks.data[0, 0] = 0.0
    out = rq(z)
    reset = rq.reset_dead_codes(out.residuals, threshold=1.0, generator=torch.Generator().manual_seed(0))
    assert reset == [7]
    # the reset codes are now points of the data, so a second pass uses more than one code
    out2 = rq(z)
    assert len(torch.unique(out2.codes[:, 0])) > 1
    assert float(rq.usage.sum()) == 64


def test_ema_updates_move_codes_towards_their_data():
    rq = ResidualQuantizer(levels=1, codebook_size=2, dim=2, ema=True, ema_decay=0.5)
    rq.train()
    rq.codebooks.data[0] = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    rq.ema_sum.copy_(rq.codebooks.detach())
    z = torch.tensor([[1.0, 1.0]] * 10 + [[4.0, 4.0]] * 10)
    before = rq.codebooks.detach()[0].clone()
    for _ in range(20):
        rq(z)
    after = rq.codebooks.detach()[0]
    assert (after[0] - torch.tensor([1.0, 1.0])).norm() < (before[0] - torch.tensor([1.0, 1.0])).norm()
    assert (after[1] - torch.tensor([4.0, 4.0])).norm() < 0.5
