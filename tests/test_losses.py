"""Training losses: hand-computed values, the false-negative mask, denoising, duplicates, and GradCache equality."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from specialize.losses import CachedLoss, InfoNCELoss, ListMarginMSELoss, ListwiseDistillationLoss
from specialize.losses.base import passage_groups
from specialize.losses.infonce_loss import in_batch_infonce

# Two queries, three passages each, in 2-D. Query 1 is not unit length (the losses normalize).
QUERY = [[1.0, 0.0], [0.0, 2.0]]
PASSAGES = [
    [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]],  # a, b, c: cos with query 0 = 1, 0.6, 0
    [[0.0, 3.0], [0.8, 0.6], [1.0, 0.0]],  # d, e, f: cos with query 1 = 1, 0.6, 0
]
# Query 0's top is a (0.9); b (0.7 > 0.6 * 0.9) is a likely false negative, c is not.
# Query 1's top is e, its *second* column (1.0); nothing of its own is above 0.6.
TEACHER = [[0.9, 0.7, 0.1], [0.2, 1.0, 0.5]]


def tensors(query=QUERY, passages=PASSAGES, teacher=TEACHER) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor(query), torch.tensor(passages), torch.tensor(teacher)


def cosines() -> np.ndarray:
    """Cosine of each query with the 6 passages of the batch, flattened as a, b, c, d, e, f."""
    q = np.array(QUERY) / np.linalg.norm(QUERY, axis=1, keepdims=True)
    p = np.array(PASSAGES).reshape(6, 2)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    return q @ p.T


def logsumexp(x: np.ndarray) -> float:
    return float(x.max() + np.log(np.exp(x - x.max()).sum()))


def infonce_by_hand(temperature: float, kept: list[list[int]], positive: list[int]) -> float:
    """Mean over queries of -logit(positive) + logsumexp(logits of the kept columns)."""
    logits = cosines() / temperature
    return float(np.mean([logsumexp(logits[i, kept[i]]) - logits[i, positive[i]] for i in range(2)]))


def kl_by_hand(teacher_temperature: float, student_temperature: float) -> float:
    """sum_i sum_p t_ip (log t_ip - log s_ip) / B with t, s the two softmaxes over each query's own list."""
    own = np.stack([cosines()[0, 0:3], cosines()[1, 3:6]])
    total = 0.0
    for i in range(2):
        log_t = np.array(TEACHER[i]) / teacher_temperature
        log_t = log_t - logsumexp(log_t)
        log_s = own[i] / student_temperature
        log_s = log_s - logsumexp(log_s)
        total += float((np.exp(log_t) * (log_t - log_s)).sum())
    return total / 2


def test_hand_example_cosines_are_what_the_comments_say():
    np.testing.assert_allclose(cosines(), [[1, 0.6, 0, 0, 0.8, 1], [0, 0.8, 1, 1, 0.6, 0]], atol=1e-12)


def test_listwise_loss_matches_hand_computation():
    loss = ListwiseDistillationLoss(None).compute_loss_from_embeddings(*tensors())
    # InfoNCE: query 0 keeps a (positive), c and all of query 1's passages; b is masked.
    # Query 1 keeps everything, positive e (flat column 4).
    expected = kl_by_hand(0.3, 0.05) + 0.1 * infonce_by_hand(0.01, [[0, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]], [0, 4])
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_listwise_loss_options_change_the_value_as_documented():
    q, p, t = tensors()
    kl_only = ListwiseDistillationLoss(None, infonce_weight=0.0).compute_loss_from_embeddings(q, p, t)
    assert kl_only.item() == pytest.approx(kl_by_hand(0.3, 0.05), rel=1e-5)
    unmasked = ListwiseDistillationLoss(None, false_negative_ratio=None, teacher_temperature=0.5)
    expected = kl_by_hand(0.5, 0.05) + 0.1 * infonce_by_hand(0.01, [list(range(6))] * 2, [0, 4])
    assert unmasked.compute_loss_from_embeddings(q, p, t).item() == pytest.approx(expected, rel=1e-5)
    # At 0.01 the masked b (cos 0.6 vs 1) hardly counts anyway; at 0.2 the mask visibly matters.
    soft = ListwiseDistillationLoss(None, infonce_weight=0.5, infonce_temperature=0.2)
    expected = kl_by_hand(0.3, 0.05) + 0.5 * infonce_by_hand(0.2, [[0, 2, 3, 4, 5], list(range(6))], [0, 4])
    assert soft.compute_loss_from_embeddings(q, p, t).item() == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(kl_by_hand(0.3, 0.05) + 0.5 * infonce_by_hand(0.2, [list(range(6))] * 2, [0, 4]))


def test_infonce_loss_matches_hand_computation():
    plain = InfoNCELoss(None).compute_loss_from_embeddings(*tensors())
    assert plain.item() == pytest.approx(infonce_by_hand(0.05, [list(range(6))] * 2, [0, 4]), rel=1e-5)
    denoised = InfoNCELoss(None, temperature=0.1, denoise_ratio=0.6).compute_loss_from_embeddings(*tensors())
    expected = infonce_by_hand(0.1, [[0, 2, 3, 4, 5], list(range(6))], [0, 4])
    assert denoised.item() == pytest.approx(expected, rel=1e-5)


def test_margin_mse_matches_hand_computation():
    # Student margins 6 * (cos_pos - cos_neg): query 0: 2.4, 6.0; query 1 (positive e, cos 0.6): -2.4, 3.6.
    # Teacher margins: 0.2, 0.8; 0.8, 0.5.
    expected = ((2.4 - 0.2) ** 2 + (6.0 - 0.8) ** 2 + (-2.4 - 0.8) ** 2 + (3.6 - 0.5) ** 2) / 4
    assert ListMarginMSELoss(None).compute_loss_from_embeddings(*tensors()).item() == pytest.approx(expected, rel=1e-5)
    half = ListMarginMSELoss(None, scale=3.0).compute_loss_from_embeddings(*tensors()).item()
    assert half == pytest.approx(((1.2 - 0.2) ** 2 + (3.0 - 0.8) ** 2 + (-1.2 - 0.8) ** 2 + (1.8 - 0.5) ** 2) / 4)


@pytest.mark.parametrize(
    "loss",
    [ListwiseDistillationLoss(None), InfoNCELoss(None, denoise_ratio=0.6), ListMarginMSELoss(None)],
    ids=lambda loss: type(loss).__name__,
)
def test_positive_is_the_teacher_argmax_not_the_first_column(loss):
    q, p, t = tensors()
    order = torch.tensor([2, 0, 1])
    shuffled = loss.compute_loss_from_embeddings(q, p[:, order], t[:, order])
    torch.testing.assert_close(shuffled, loss.compute_loss_from_embeddings(q, p, t))


def moved(passages: torch.Tensor, query: int, column: int) -> torch.Tensor:
    """A copy of ``passages`` with one passage turned to a new direction."""
    out = passages.clone()
    out[query, column] = torch.tensor([1.0, 0.1])  # nearly the query 0 direction
    return out


def test_false_negative_mask_makes_the_masked_passage_irrelevant_to_infonce():
    q, p, t = q_p_t = tuple(x[:1] for x in tensors())  # query 0 alone: its list is the whole batch
    full, kl_only = ListwiseDistillationLoss(None), ListwiseDistillationLoss(None, infonce_weight=0.0)

    def infonce_term(passages: torch.Tensor) -> float:
        kl = kl_only.compute_loss_from_embeddings(q, passages, t)
        return (full.compute_loss_from_embeddings(q, passages, t) - kl).item()

    assert infonce_term(moved(p, 0, 1)) == pytest.approx(infonce_term(p), abs=1e-6)  # b: 0.7 > 0.6 * 0.9, masked
    assert infonce_term(moved(p, 0, 2)) != pytest.approx(infonce_term(p), abs=1e-3)  # c: 0.1, a negative
    assert InfoNCELoss(None, denoise_ratio=0.6).compute_loss_from_embeddings(*q_p_t).item() == pytest.approx(
        InfoNCELoss(None, denoise_ratio=0.6).compute_loss_from_embeddings(q, moved(p, 0, 1), t).item()
    )


def test_without_denoising_the_high_scoring_passage_is_a_negative():
    q, p, t = (x[:1] for x in tensors())
    loss = InfoNCELoss(None)
    assert loss.compute_loss_from_embeddings(q, moved(p, 0, 1), t).item() != pytest.approx(
        loss.compute_loss_from_embeddings(q, p, t).item(), abs=1e-3
    )


def query_gradient(loss: InfoNCELoss, passages: torch.Tensor) -> torch.Tensor:
    q, _, t = tensors()
    q.requires_grad_()
    loss.compute_loss_from_embeddings(q, passages, t).backward()
    return q.grad[0]


def test_denoising_masks_only_the_query_own_list():
    _, p, _ = tensors()
    loss = InfoNCELoss(None, denoise_ratio=0.6)
    # b is query 0's denoised passage: query 0's gradient ignores it.
    torch.testing.assert_close(query_gradient(loss, moved(p, 0, 1)), query_gradient(loss, p))
    # e scores 1.0 for query 1, but for query 0 it is an in-batch negative like any other.
    assert not torch.allclose(query_gradient(loss, moved(p, 1, 1)), query_gradient(loss, p), atol=1e-3)


def test_copies_of_the_positive_and_of_masked_passages_are_masked_everywhere():
    q, p, t = tensors()
    # Say f (query 1, column 2) is a copy of a, query 0's positive, and d one of b, query 0's false
    # negative (the mask reads only the groups, not the embeddings).
    groups = torch.tensor([[0, 1, 2], [1, 4, 0]])
    loss = in_batch_infonce(q, p, t, 0.05, 0.6, groups)
    # Query 0 keeps a, c, e; query 1 keeps everything (its own positive e has no copy).
    assert loss.item() == pytest.approx(infonce_by_hand(0.05, [[0, 2, 4], list(range(6))], [0, 4]), rel=1e-5)
    no_ratio = in_batch_infonce(q, p, t, 0.05, None, groups)
    expected = infonce_by_hand(0.05, [[0, 1, 2, 3, 4], list(range(6))], [0, 4])
    assert no_ratio.item() == pytest.approx(expected, rel=1e-5)


def test_passage_groups_compare_token_ids_ignoring_padding():
    def column(ids: list[list[int]], mask: list[list[int]]) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}

    groups = passage_groups(
        [
            column([[101, 5, 102, 0], [101, 7, 8, 102]], [[1, 1, 1, 0], [1, 1, 1, 1]]),
            # The same two texts, right-padded wider and left-padded.
            column([[101, 7, 8, 102, 0, 0], [0, 101, 5, 102, 0, 0]], [[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 0, 0]]),
            # An attended token 0 is part of the text, not padding.
            column([[101, 5, 102, 0], [101, 5, 0, 102]], [[1, 1, 1, 1], [1, 1, 1, 1]]),
        ]
    )
    assert groups.shape == (2, 3)
    assert groups[0, 0] == groups[1, 1] and groups[1, 0] == groups[0, 1]
    assert len({groups[0, 0].item(), groups[1, 0].item(), groups[0, 2].item(), groups[1, 2].item()}) == 4
    assert passage_groups([{"input_ids": torch.tensor([1, 2, 3]), "offsets": torch.tensor([0])}]) is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: ListwiseDistillationLoss(None, teacher_temperature=0),
        lambda: ListwiseDistillationLoss(None, infonce_weight=-1),
        lambda: ListwiseDistillationLoss(None, false_negative_ratio=1.5),
        lambda: InfoNCELoss(None, temperature=-0.05),
        lambda: ListMarginMSELoss(None, scale=0),
    ],
)
def test_bad_hyperparameters_are_refused(make):
    with pytest.raises(ValueError, match="must be"):
        make()


# --- with the real bundled MiniLM -------------------------------------------------------------

QUERIES = ["what do cats eat", "how do planes stay in the air", "why is rust memory safe"]
CATS = "Cats are obligate carnivores and eat meat."  # query 0's top passage, and in query 1's list too
LISTS = [
    [CATS, "Dogs are omnivores.", "Kittens drink milk.", "Planes have wings."],
    ["Wings generate lift from airflow.", CATS, "Jet engines push air.", "Birds fly."],
    ["The borrow checker enforces ownership.", "Garbage collectors free memory.", "C is unsafe.", "Rust is new."],
]
SCORES = [[0.9, 0.1, 0.6, 0.0], [0.3, 0.0, 0.8, 1.0], [1.0, 0.2, 0.7, 0.1]]  # query 1's top is its last column


@pytest.fixture(scope="module")
def model():
    from sentence_transformers import SentenceTransformer

    from specialize.models import resolve_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: a second thread only adds waits, badly so on a busy machine
    student = SentenceTransformer(str(resolve_model("bundled:minilm")), device="cpu")
    student.max_seq_length = 32
    student.eval()  # no dropout, so the cached replay and the plain pass see the same network
    yield student
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def students(model) -> dict[torch.dtype, torch.nn.Module]:
    return {torch.float32: model, torch.float64: copy.deepcopy(model).double()}


@pytest.fixture(scope="module")
def batch(model):
    features = [model.preprocess(QUERIES)] + [model.preprocess([row[p] for row in LISTS]) for p in range(4)]
    return features, torch.tensor(SCORES)


def backward(loss: torch.nn.Module, batch) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss value and every parameter's gradient after one backward pass."""
    loss.model.zero_grad()
    features, labels = batch
    value = loss(features, labels)
    value.backward()
    return value.item(), {name: p.grad.clone() for name, p in loss.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize(
    "make",
    [ListwiseDistillationLoss, lambda m: InfoNCELoss(m, denoise_ratio=0.6), ListMarginMSELoss],
    ids=["listwise", "infonce", "margin_mse"],
)
def test_cached_loss_gives_the_same_loss_and_gradients(make, dtype, students, batch):
    # fp32 rounding differs between the two paths by up to ~1e-5 on gradients of size ~2 (relative
    # ~5e-6); in fp64 the two must agree to 1e-10, which no real difference in the math would pass.
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 0.0}
    student = students[dtype]
    batch = (batch[0], batch[1].to(dtype))
    value, grads = backward(make(student), batch)
    cached_value, cached_grads = backward(CachedLoss(make(student), mini_batch_size=2), batch)
    assert cached_value == pytest.approx(value, abs=tolerance["atol"])
    assert grads.keys() == cached_grads.keys() and len(grads) > 50
    assert any(g.abs().max() > 1e-3 for g in grads.values())  # a real gradient, not all zeros
    for name, grad in grads.items():
        difference = (cached_grads[name] - grad).abs().max()
        assert torch.allclose(cached_grads[name], grad, **tolerance), f"{name} differs by {difference}"
    with torch.no_grad():  # evaluation: no backward hook, same value
        evaluated = CachedLoss(make(student), mini_batch_size=2)(*batch).item()
    assert evaluated == pytest.approx(value, abs=tolerance["atol"])


def test_forward_masks_the_duplicate_passage_text(model, batch):
    features, labels = batch
    with torch.no_grad():
        columns = [model(f)["sentence_embedding"] for f in features]
        query, passages = columns[0], torch.stack(columns[1:], dim=1)
        loss = InfoNCELoss(model)
        # Query 1's passage_1 is query 0's positive, word for word.
        groups = torch.tensor([[0, 1, 2, 3], [4, 0, 6, 7], [8, 9, 10, 11]])
        with_copies = loss.compute_loss_from_embeddings(query, passages, labels, groups)
        assert loss(features, labels).item() == pytest.approx(with_copies.item(), abs=1e-5)
        all_distinct = loss.compute_loss_from_embeddings(query, passages, labels)
    assert with_copies.item() != pytest.approx(all_distinct.item(), abs=1e-4)


@pytest.mark.parametrize(
    "wrap", [lambda loss: loss, lambda loss: CachedLoss(loss, mini_batch_size=2)], ids=["plain", "cached"]
)
def test_label_shape_must_match_the_passage_columns(wrap, model, batch):
    features, labels = batch
    loss = wrap(ListwiseDistillationLoss(model))
    with pytest.raises(ValueError, match=r"shape \(batch, passages\) = \(3, 4\), got \(3, 3\)"):
        loss(features, labels[:, :3])
    with pytest.raises(ValueError, match="at least 2 passage column"):
        loss(features[:2], labels[:, :1])


def test_cached_loss_refuses_a_bad_mini_batch_size(model):
    with pytest.raises(ValueError, match="mini_batch_size"):
        CachedLoss(ListMarginMSELoss(model), mini_batch_size=0)
