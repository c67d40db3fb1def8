"""The reference recurrences: nn.GRU equivalence, AUGRU limits, padding invariance, empty histories."""
import pytest
import torch
from torch import nn

from dien import kernels
from dien.kernels import reference


def make_inputs(batch=5, steps=9, inputs=6, hidden=7, seed=0):
    torch.manual_seed(seed)
    gru = nn.GRU(inputs, hidden, batch_first=True)
    x = torch.randn(batch, steps, inputs)
    lengths = torch.tensor([steps, 0, 1, steps - 2, 3][:batch])
    weights = [gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0]
    return gru, x, lengths, weights


def test_gru_equals_nn_gru_outputs_state_and_gradients():
    gru, x, _, weights = make_inputs()
    lengths = torch.full((x.shape[0],), x.shape[1])
    h0 = torch.randn(x.shape[0], 7)
    x1 = x.clone().requires_grad_()
    out, h_last = kernels.gru(x1, lengths, *weights, h0=h0)
    expected_out, expected_h = gru(x, h0.unsqueeze(0))
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(h_last, expected_h[0])

    (out.square().sum() + h_last.sum()).backward()
    ours = [x1.grad] + [w.grad.clone() for w in weights]
    for w in weights:
        w.grad = None
    x2 = x.clone().requires_grad_()
    expected_out, expected_h = gru(x2, h0.unsqueeze(0))
    (expected_out.square().sum() + expected_h.sum()).backward()
    theirs = [x2.grad] + [w.grad for w in weights]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_gru_respects_lengths_like_packed_nn_gru():
    gru, x, lengths, weights = make_inputs()
    out, h_last = kernels.gru(x, lengths, *weights)
    for b, length in enumerate(lengths.tolist()):
        if length == 0:
            assert torch.all(h_last[b] == 0) and torch.all(out[b] == 0)
            continue
        expected_out, expected_h = gru(x[b : b + 1, :length])
        torch.testing.assert_close(out[b, :length], expected_out[0])
        torch.testing.assert_close(h_last[b], expected_h[0, 0])
        assert torch.all(out[b, length:] == 0)


def test_augru_with_attention_one_is_gru():
    _, x, lengths, weights = make_inputs()
    h0 = torch.randn(x.shape[0], 7)
    expected = kernels.gru(x, lengths, *weights, h0=h0)
    actual = kernels.augru(x, torch.ones(x.shape[:2]), lengths, *weights, h0=h0)
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b)


def test_augru_with_attention_zero_keeps_the_state():
    _, x, _, weights = make_inputs()
    lengths = torch.full((x.shape[0],), x.shape[1])
    h0 = torch.randn(x.shape[0], 7)
    out, h_last = kernels.augru(x, torch.zeros(x.shape[:2]), lengths, *weights, h0=h0)
    torch.testing.assert_close(h_last, h0)
    torch.testing.assert_close(out, h0.unsqueeze(1).expand_as(out))


def test_augru_is_the_paper_cell_not_the_official_one():
    _, x, lengths, weights = make_inputs()
    att = torch.rand(x.shape[:2])
    paper, _ = kernels.augru(x, att, lengths, *weights)
    official, _ = reference.recurrence(x, att, lengths, *weights, update=reference.augru_official_update)
    assert not torch.allclose(paper, official)
    # The official cell with a = 0 is a plain GRU step, the paper's keeps the state.
    official_zero, _ = reference.recurrence(x, torch.zeros_like(att), lengths, *weights,
                                            update=reference.augru_official_update)
    torch.testing.assert_close(official_zero, kernels.gru(x, lengths, *weights)[0])


@pytest.mark.parametrize("op", ["gru", "augru"])
def test_padding_values_and_extra_steps_change_nothing(op):
    _, x, lengths, weights = make_inputs()
    att = torch.rand(x.shape[:2])

    def run(x, att):
        if op == "gru":
            return kernels.gru(x, lengths, *weights)
        return kernels.augru(x, att, lengths, *weights)

    out, h_last = run(x, att)
    padded = torch.arange(x.shape[1]).unsqueeze(0) >= lengths.unsqueeze(1)
    x_noise = x.masked_fill(padded.unsqueeze(2), 123.0)
    att_noise = att.masked_fill(padded, 0.77)
    out2, h2 = run(x_noise, att_noise)
    torch.testing.assert_close(out2, out)
    torch.testing.assert_close(h2, h_last)

    extra = 4
    out3, h3 = run(torch.cat([x, torch.randn(x.shape[0], extra, x.shape[2])], 1),
                   torch.cat([att, torch.rand(x.shape[0], extra)], 1))
    torch.testing.assert_close(out3[:, : x.shape[1]], out)
    assert torch.all(out3[:, x.shape[1]:] == 0)
    torch.testing.assert_close(h3, h_last)


def test_rows_do_not_depend_on_other_rows_lengths():
    _, x, lengths, weights = make_inputs()
    out, _ = kernels.gru(x, lengths, *weights)
    other = lengths.clone()
    other[1:] = torch.tensor([3, 0, 9, 1])
    out2, _ = kernels.gru(x, other, *weights)
    torch.testing.assert_close(out2[0], out[0])


@pytest.mark.parametrize("op", ["gru", "augru"])
def test_empty_histories_have_finite_outputs_and_gradients(op):
    _, x, _, weights = make_inputs()
    x = x.clone().requires_grad_()
    att = torch.rand(x.shape[:2], requires_grad=True)
    lengths = torch.zeros(x.shape[0], dtype=torch.long)
    if op == "gru":
        out, h_last = kernels.gru(x, lengths, *weights)
    else:
        out, h_last = kernels.augru(x, att, lengths, *weights)
    (out.sum() + h_last.sum()).backward()
    assert torch.all(out == 0) and torch.all(h_last == 0)
    for grad in [x.grad] + [w.grad for w in weights]:
        assert torch.isfinite(grad).all()


def test_bad_shapes_are_named():
    _, x, lengths, weights = make_inputs()
    with pytest.raises(ValueError, match="lengths"):
        kernels.gru(x, lengths[:2], *weights)
    with pytest.raises(ValueError, match="att"):
        kernels.augru(x, torch.rand(2, 2), lengths, *weights)
    with pytest.raises(ValueError, match="unknown kernel backend"):
        kernels.gru(x, lengths, *weights, backend="cuda-magic")
