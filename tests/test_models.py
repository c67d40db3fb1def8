"""The model family: auxiliary loss, attention masking, the AUGRU wiring, every model learns."""
import pytest
import torch

from dien import kernels
from dien.data.batch import Batch
from dien.kernels import reference
from dien.model import MODELS, ModelConfig, build_model
from dien.model.attention import BilinearAttention, MLPAttention
from dien.model.dien import DIEN
from dien.model.interest import InterestExtractor, agru_weights
from dien.model.layers import Dice
from dien.train.loop import TrainConfig, iterate_batches, make_optimizer, train_step


def random_batch(batch=6, steps=8, n_items=50, n_cats=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([0, 1, steps, 3, steps - 1, 5][:batch])
    valid = torch.arange(steps).unsqueeze(0) < lengths.unsqueeze(1)

    def ids(high):
        return torch.randint(2, high, (batch, steps), generator=g) * valid

    return Batch(
        user=torch.arange(batch), hist_item=ids(n_items), hist_cat=ids(n_cats), neg_hist_item=ids(n_items),
        neg_hist_cat=ids(n_cats), lengths=lengths, target_item=torch.randint(2, n_items, (batch,), generator=g),
        target_cat=torch.randint(2, n_cats, (batch,), generator=g), label=torch.randint(0, 2, (batch,), generator=g).float(),
    )


def test_auxiliary_loss_ignores_padding_and_is_positive():
    torch.manual_seed(0)
    extractor = InterestExtractor(input_dim=4, hidden=5)
    lengths = torch.tensor([4, 2, 0, 1])
    behaviors, negatives = torch.randn(4, 6, 4), torch.randn(4, 6, 4)
    states = extractor(behaviors, lengths)
    loss = extractor.auxiliary_loss(states, behaviors, negatives, lengths)
    assert loss.item() > 0

    padded = torch.arange(6).unsqueeze(0) >= lengths.unsqueeze(1)
    noisy_b = behaviors.masked_fill(padded.unsqueeze(2), 50.0)
    noisy_n = negatives.masked_fill(padded.unsqueeze(2), -50.0)
    states2 = extractor(noisy_b, lengths)
    torch.testing.assert_close(extractor.auxiliary_loss(states2, noisy_b, noisy_n, lengths), loss)


def test_auxiliary_loss_is_a_mean_over_valid_pairs_only():
    torch.manual_seed(0)
    extractor = InterestExtractor(input_dim=4, hidden=5)
    behaviors, negatives = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    lengths = torch.tensor([4, 2])
    states = extractor(behaviors, lengths)
    together = extractor.auxiliary_loss(states, behaviors, negatives, lengths)
    # Row 0 has 3 valid pairs, row 1 one: the mean weights pairs, not rows.
    row0 = extractor.auxiliary_loss(states[:1], behaviors[:1], negatives[:1], lengths[:1])
    row1 = extractor.auxiliary_loss(states[1:], behaviors[1:], negatives[1:], lengths[1:])
    torch.testing.assert_close(together, (3 * row0 + row1) / 4)
    empty = extractor.auxiliary_loss(states, behaviors, negatives, torch.tensor([1, 0]))
    assert empty.item() == 0.0


def test_auxiliary_loss_equals_the_paper_formula_on_concatenated_inputs():
    """Eq. 6-7 written out: the auxiliary MLP on concat(h_t, e_{t+1}) for every valid pair, through DIEN's own
    path (only the pairs' negatives embedded, the first layer's h part shared by the clicked and the sampled)."""
    torch.manual_seed(0)
    model = build_model("dien", ModelConfig(50, 10, item_dim=3, cat_dim=2, hidden=5)).train()
    batch = random_batch()
    history = model.encode_history(batch.hist_item, batch.hist_cat, batch.lengths)
    negatives = model.embedding(batch.neg_hist_item, batch.neg_hist_cat)
    terms = []
    for b, length in enumerate(batch.lengths.tolist()):
        for t in range(length - 1):
            h = history.states[b, t]
            clicked = model.extractor.aux_net(torch.cat([h, history.behaviors[b, t + 1]]).unsqueeze(0))
            sampled = model.extractor.aux_net(torch.cat([h, negatives[b, t + 1]]).unsqueeze(0))
            terms.append(-torch.log(torch.sigmoid(clicked)) - torch.log(1 - torch.sigmoid(sampled)))
    expected = torch.cat(terms).mean()
    loss = model.auxiliary_loss(history, batch)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(model.extractor.auxiliary_loss(history.states, history.behaviors, negatives,
                                                              batch.lengths), expected)
    grads = torch.autograd.grad(loss, [model.extractor.aux_net.layers[0].weight, model.embedding.items.weight],
                                retain_graph=True)
    expected_grads = torch.autograd.grad(expected, [model.extractor.aux_net.layers[0].weight,
                                                    model.embedding.items.weight])
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


def test_changing_a_negative_changes_the_auxiliary_loss():
    torch.manual_seed(0)
    # N(0, 1) embeddings: with the default small ones a changed negative moves the loss by a few 1e-7 only.
    model = build_model("dien", ModelConfig(n_items=50, n_cats=10, embedding_std=None)).train()
    batch = random_batch()
    loss = model(batch).aux_loss
    batch.neg_hist_item[2, 3] = 2 if batch.neg_hist_item[2, 3] != 2 else 3
    assert model(batch).aux_loss.item() != pytest.approx(loss.item())


@pytest.mark.parametrize("attention", [BilinearAttention(5, 4), MLPAttention(5, 4)])
def test_attention_is_a_softmax_over_valid_steps(attention):
    states, query = torch.randn(3, 6, 5), torch.randn(3, 4)
    lengths = torch.tensor([6, 2, 0])
    weights = attention(query, states, lengths)
    torch.testing.assert_close(weights.sum(1), torch.tensor([1.0, 1.0, 0.0]))
    assert torch.all(weights[1, 2:] == 0) and torch.all(weights[2] == 0)


def test_dien_history_encoding_is_candidate_independent():
    torch.manual_seed(0)
    model = build_model("dien", ModelConfig(n_items=50, n_cats=10)).eval()
    batch = random_batch()
    history = model.encode_history(batch.hist_item, batch.hist_cat, batch.lengths)
    # Score 3 candidates for request 2 by selecting its encoding: same as three full forward passes.
    index = torch.tensor([2, 2, 2])
    targets = torch.tensor([5, 6, 7])
    cats = torch.tensor([2, 3, 4])
    scores = model.score(history.select(index), targets, cats)
    for k in range(3):
        single = model.score(model.encode_history(batch.hist_item[2:3], batch.hist_cat[2:3], batch.lengths[2:3]),
                             targets[k : k + 1], cats[k : k + 1])
        torch.testing.assert_close(scores[k : k + 1], single)


@pytest.mark.parametrize("name", MODELS)
def test_selecting_only_what_the_score_reads_scores_the_same(name):
    torch.manual_seed(0)
    model = build_model(name, ModelConfig(n_items=50, n_cats=10)).eval()
    batch = random_batch()
    index = torch.tensor([2, 2, 0, 5, 2])
    targets, cats = torch.tensor([5, 6, 7, 8, 9]), torch.tensor([2, 3, 4, 1, 2])
    with torch.no_grad():
        history = model.encode_history(batch.hist_item, batch.hist_cat, batch.lengths)
        lean = history.select(index, model.score_reads)
        torch.testing.assert_close(model.score(lean, targets, cats), model.score(history.select(index), targets, cats))
    unread = {"behaviors", "lengths", "behavior_sum", "states", "evolution_inputs", "categories"} - set(
        model.score_reads)
    assert all(getattr(lean, field) is None for field in unread), unread
    if name == "dien":
        assert "behaviors" in unread  # the [C, T, E] embeddings are never copied per candidate
        # The interest states and the AUGRU's projections stay per request: candidates read them by history_rows.
        assert lean.states.data_ptr() == history.states.data_ptr()
        assert lean.evolution_inputs.data_ptr() == history.evolution_inputs.data_ptr()
        assert lean.history_rows.tolist() == index.tolist()


@pytest.mark.parametrize("attention", ["bilinear", "mlp"])
@pytest.mark.parametrize("evolution", ["augru", "agru", "aigru", "augru_official", "gru_attention"])
def test_candidates_reading_their_history_in_place_score_as_with_copies_of_it(evolution, attention):
    torch.manual_seed(0)
    # Embeddings of std 1, not the default's small init: attention weights far from uniform, so rows mixed up show.
    model = DIEN(ModelConfig(n_items=50, n_cats=10, evolution=evolution, attention=attention,
                             embedding_std=1.0)).eval()
    assert model.evolution.kind == evolution
    batch = random_batch()
    index = torch.tensor([2, 2, 0, 5, 2, 5, 1])  # unsorted, repeated, some histories unread
    targets, cats = torch.tensor([5, 6, 7, 8, 9, 1, 3]), torch.tensor([2, 3, 4, 1, 2, 5, 6])
    with torch.no_grad():
        history = model.encode_history(batch.hist_item, batch.hist_cat, batch.lengths)
        in_place = model.score(history.select(index, model.score_reads), targets, cats)
        copies = model.encode_history(batch.hist_item[index], batch.hist_cat[index], batch.lengths[index])
        torch.testing.assert_close(in_place, model.score(copies, targets, cats))
        alone = model.encode_history(batch.hist_item[5:6], batch.hist_cat[5:6], batch.lengths[5:6])  # one request
        one_request = model.score(alone.select(torch.tensor([0, 0, 0]), model.score_reads), targets[:3], cats[:3])
        three = model.encode_history(batch.hist_item[[5] * 3], batch.hist_cat[[5] * 3], batch.lengths[[5] * 3])
        torch.testing.assert_close(one_request, model.score(three, targets[:3], cats[:3]))


def test_pnn_feeds_the_mlp_every_field_and_the_inner_product_of_every_pair():
    torch.manual_seed(0)
    model = build_model("pnn", ModelConfig(n_items=50, n_cats=10, item_dim=4, cat_dim=4)).eval()
    batch = random_batch()
    seen = []
    model.mlp.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    model.predict(batch)
    valid = (torch.arange(8).unsqueeze(0) < batch.lengths.unsqueeze(1)).unsqueeze(2)
    fields = [model.embedding.items(batch.target_item), model.embedding.cats(batch.target_cat),
              (model.embedding.items(batch.hist_item) * valid).sum(1), (model.embedding.cats(batch.hist_cat) * valid).sum(1)]
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    expected = torch.cat(fields + [(fields[i] * fields[j]).sum(-1, keepdim=True) for i, j in pairs], dim=-1)
    torch.testing.assert_close(seen[0], expected)


def test_pnn_refuses_fields_of_different_widths():
    with pytest.raises(ValueError, match=r"item_dim \(18\) must equal cat_dim \(8\)"):
        build_model("pnn", ModelConfig(n_items=50, n_cats=10, cat_dim=8))


def test_wide_part_adds_a_cross_weight_once_per_distinct_history_category():
    model = build_model("wide_deep", ModelConfig(n_items=50, n_cats=10)).eval()
    wide = model.wide
    target_item, target_cat = torch.tensor([7]), torch.tensor([3])
    bucket = int(wide.cross_index(0, target_item, torch.tensor([[4]])))
    with torch.no_grad():
        wide.crosses.weight[bucket] = 1.0

    def wide_logit(categories, length):
        history = model.encode_history(torch.full((1, 5), 9), torch.tensor([categories]), torch.tensor([length]))
        return float(wide(history.categories, target_item, target_cat).detach())

    assert wide_logit([4, 4, 5, 4, 0], 4) == pytest.approx(1.0)  # category 4 three times: the feature is binary
    assert wide_logit([5, 6, 5, 0, 0], 3) == 0.0
    assert wide_logit([5, 6, 0, 0, 4], 3) == 0.0  # past the history's length
    assert wide_logit([4, 5, 6, 0, 0], 3) == pytest.approx(1.0)
    with torch.no_grad():
        deep = model.mlp(torch.cat([model.embedding(target_item, target_cat),
                                    model.encode_history(torch.tensor([[9, 9]]), torch.tensor([[4, 5]]),
                                                         torch.tensor([2])).behavior_sum], dim=-1))
        full = model.score(model.encode_history(torch.tensor([[9, 9]]), torch.tensor([[4, 5]]), torch.tensor([2])),
                           target_item, target_cat)
    torch.testing.assert_close(full, deep + 1.0)


def test_cross_buckets_spread_over_the_table():
    wide = build_model("wide_deep", ModelConfig(n_items=5000, n_cats=100, wide_buckets=1024)).wide
    targets = torch.arange(2, 5000)
    buckets = torch.cat([wide.cross_index(kind, targets, torch.arange(2, 100).expand(len(targets), -1)).flatten()
                         for kind in (0, 1)])
    counts = torch.bincount(buckets, minlength=1024)
    assert buckets.min() >= 0 and buckets.max() < 1024
    assert counts.max() < 1.2 * counts.float().mean()


def test_an_encoding_cut_into_rows_and_stacked_scores_the_same():
    torch.manual_seed(0)
    batch = random_batch()
    for name in ("wide_deep", "din", "dien"):
        model = build_model(name, ModelConfig(n_items=50, n_cats=10)).eval()
        with torch.no_grad():
            history = model.encode_history(batch.hist_item, batch.hist_cat, batch.lengths)
            stacked = type(history).stack(history.rows(model.score_reads)[::-1])
            torch.testing.assert_close(model.score(stacked, batch.target_item.flip(0), batch.target_cat.flip(0)),
                                       model.score(history, batch.target_item, batch.target_cat).flip(0))


def test_only_dien_returns_an_auxiliary_loss():
    batch = random_batch()
    for name in MODELS:
        output = build_model(name, ModelConfig(n_items=50, n_cats=10)).train()(batch)
        assert (output.aux_loss is not None) == (name == "dien"), name
        assert output.logits.shape == (6,) and torch.isfinite(output.logits).all()


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match="unknown model 'dein'"):
        build_model("dein", ModelConfig(n_items=5, n_cats=5))


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_loss_falls(name, small_dataset):
    torch.manual_seed(0)
    model = build_model(name, ModelConfig(small_dataset.n_items, small_dataset.n_cats, hidden=16))
    config = TrainConfig(batch_size=64, lr=3e-3)
    optimizer, _ = make_optimizer(model, config)
    batches = list(iterate_batches(small_dataset.splits["train"].slice(0, 256), 64))
    first = sum(train_step(model, b, optimizer, config).loss for b in batches)
    for _ in range(6):
        last = sum(train_step(model, b, optimizer, config).loss for b in batches)
    assert last < 0.9 * first, (first, last)


def test_agru_through_the_augru_kernel_is_paper_eq_10():
    torch.manual_seed(0)
    gru = torch.nn.GRU(5, 6, batch_first=True)
    weights = [gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0]
    x, att, lengths = torch.randn(4, 7, 5), torch.rand(4, 7), torch.tensor([7, 0, 3, 5])
    expected, expected_h = reference.recurrence(x, att, lengths, *weights, update=reference.agru_update)
    out, h_last = kernels.augru(x, att, lengths, *agru_weights(*weights))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(h_last, expected_h)


@pytest.mark.parametrize("name", ["din", "dien"])
def test_by_default_the_mlp_sees_no_sum_pooling(name, small_dataset):
    torch.manual_seed(0)
    config = ModelConfig(small_dataset.n_items, small_dataset.n_cats, hidden=16)
    model = build_model(name, config)
    batch = next(iter(iterate_batches(small_dataset.splits["train"], 32)))
    logits = model(batch).logits
    # The MLP's input is [target, attended history] or [target, final interest]: no sum-pooled features,
    # so scaling every behavior embedding's sum (one extra copy of the history) is invisible to it.
    history = model.encode_history(batch.hist_item, batch.hist_cat, batch.lengths)
    history.behavior_sum = history.behavior_sum * 7.0
    assert torch.allclose(model.score(history, batch.target_item, batch.target_cat), logits, atol=1e-5)
    with_sum = build_model(name, ModelConfig(small_dataset.n_items, small_dataset.n_cats, hidden=16,
                                             history_sum=True))
    assert with_sum.mlp.layers[0].in_features - model.mlp.layers[0].in_features == 2 * model.embedding.dim


def test_a_config_saved_before_history_sum_existed_loads_with_the_sum():
    """Artifacts written before the field existed were trained with the sum-pooled inputs."""
    saved = ModelConfig(100, 10, history_sum=True).to_dict()
    del saved["history_sum"]
    assert ModelConfig.from_dict(saved).history_sum is True
    assert ModelConfig.from_dict(ModelConfig(100, 10).to_dict()).history_sum is False


def test_embeddings_start_small_by_default_with_a_zero_padding_row():
    torch.manual_seed(0)
    small = build_model("dien", ModelConfig(5000, 50))
    wide = build_model("dien", ModelConfig(5000, 50, embedding_std=None))
    for model, std in ((small, 0.01), (wide, 1.0)):
        table = model.embedding.items.weight
        assert table[1:].std().item() == pytest.approx(std, rel=0.05)
        assert torch.all(table[0] == 0) and torch.all(model.embedding.cats.weight[0] == 0)


@pytest.mark.parametrize("training", [False, True])
def test_dice_is_the_din_formula_with_running_or_batch_statistics(training):
    torch.manual_seed(0)
    dice = Dice(5)
    with torch.no_grad():
        dice.alpha.copy_(torch.randn(5))
        dice.norm.running_mean.copy_(torch.randn(5))
        dice.norm.running_var.copy_(torch.rand(5) + 0.5)
    x = torch.randn(7, 5) * 3
    mean, var = (x.mean(0), x.var(0, unbiased=False)) if training else (dice.norm.running_mean, dice.norm.running_var)
    p = torch.sigmoid((x - mean) / torch.sqrt(var + dice.norm.eps))
    expected = p * x + (1 - p) * dice.alpha * x
    dice.train(training)
    torch.testing.assert_close(dice(x), expected)
    sent = x.clone()
    with torch.inference_mode():
        torch.testing.assert_close(dice(x), expected)
    torch.testing.assert_close(x, sent, rtol=0, atol=0)  # the inference path works in place on its own tensors


def test_dice_on_one_training_row_uses_the_running_statistics_and_passes_gradients():
    torch.manual_seed(0)
    dice = Dice(3)
    with torch.no_grad():
        dice.alpha.fill_(0.25)
    x = torch.randn(1, 3, requires_grad=True)
    dice(x).sum().backward()
    p = torch.sigmoid(x.detach() / (1 + dice.norm.eps) ** 0.5)
    # d/dx of x (alpha + (1 - alpha) p), p = sigmoid(x / sqrt(1 + eps)) at the initial running stats (0, 1).
    expected = 0.25 + 0.75 * (p + x.detach() * p * (1 - p) / (1 + dice.norm.eps) ** 0.5)
    torch.testing.assert_close(x.grad, expected)
    assert dice.alpha.grad is not None
