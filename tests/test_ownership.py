"""Ownership verification: key files, the tests and their null distributions, suspects (model files,
TorchScript, black-box commands) and the verdict."""

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as st

from poisonlab import PoisonlabError
from poisonlab.models import create_model
from poisonlab.ownership import (OwnershipKey, load_key, load_model, make_keys, save_model, verify)
from poisonlab.ownership import stats
from poisonlab.ownership.verify import Answers, key_ranks, parse_answers

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 8, 8)


class KeyLookup(torch.nn.Module):
    """A stand-in for a model that learned the keys: answers a key image with its key label, and class 0
    on anything else."""

    def __init__(self, images, labels, num_classes):
        super().__init__()
        self.images, self.labels, self.c = images.float().div(255), labels, num_classes

    def forward(self, x):
        out = torch.zeros(len(x), self.c)
        out[:, 0] = 1
        for i, xi in enumerate(x):
            match = (self.images - xi).abs().flatten(1).amax(1) < 1e-4
            if match.any():
                out[i] = 0
                out[i, self.labels[match.nonzero()[0, 0]]] = 5
        return out


def taggant_key(n=10, c=10, seed=0, top_k=1):
    images, labels = make_keys(n, SHAPE, c, seed=seed)
    return OwnershipKey("taggants", c, SHAPE, images=images, labels=labels, top_k=top_k)


# ------------------------------------------------------------------------------------------ statistics
def test_binomial_test_exact_values():
    r = stats.binomial_test(5, 10, 1, 10)
    expected = sum(st.binom.pmf(h, 10, 0.1) for h in range(5, 11))
    assert r.p_value == pytest.approx(expected, rel=1e-12) and r.p_value == pytest.approx(0.0016349374, rel=1e-6)
    assert stats.binomial_test(0, 10, 1, 10).p_value == 1.0
    assert stats.binomial_test(10, 10, 10, 1000).p_value == pytest.approx(0.01 ** 10)
    with pytest.raises(PoisonlabError):
        stats.binomial_test(11, 10, 1, 10)
    with pytest.raises(PoisonlabError):
        stats.binomial_test(1, 10, 10, 10)  # top-k = all classes: every key would be a hit


def test_randomized_pvalues_are_uniform_under_the_null():
    rng = np.random.default_rng(0)
    hits = rng.binomial(10, 0.1, size=4000)
    p_rand = [stats.randomized_pvalue(h, 10, 0.1, u) for h, u in zip(hits, rng.random(4000))]
    assert stats.uniformity(p_rand)["ks_pvalue"] > 0.01
    p_plain = [stats.binomial_test(int(h), 10, 1, 10).p_value for h in hits]
    u = stats.uniformity(p_plain)
    assert u["ks_pvalue"] < 1e-6  # discrete p-values are not uniform: why the null check randomizes them
    assert u["fpr_0.05"] <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 4000)  # ...but they are conservative
    gof = stats.hits_goodness_of_fit(hits, 10, 0.1)
    assert gof["chi2_pvalue"] > 0.01 and sum(gof["observed"]) == 4000
    shifted = stats.hits_goodness_of_fit(rng.binomial(10, 0.2, size=1000), 10, 0.1)
    assert shifted["chi2_pvalue"] < 1e-6


def test_paired_t_test_matches_scipy_with_margin():
    rng = np.random.default_rng(1)
    pb = rng.random(100) * 0.2
    pw = np.clip(pb + 0.5 + rng.normal(0, 0.1, 100), 0, 1)
    r = stats.paired_t_test(pw, pb, 0.2)
    ref = st.ttest_rel(pb + 0.2, pw, alternative="less")
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-9) and r.statistic == pytest.approx(-ref.statistic)
    assert stats.paired_t_test(pb + 0.1, pb, 0.2).p_value > 0.5  # an increase below the margin is no evidence
    assert stats.paired_t_test(np.ones(5), np.zeros(5), 0.2).p_value == 0.0  # degenerate but clear
    assert stats.paired_t_test(np.zeros(5), np.zeros(5), 0.2).p_value == 1.0


# ------------------------------------------------------------------------------------------ key files
def test_keys_are_seeded_ood_and_uniformly_labelled():
    a, b = make_keys(500, SHAPE, 10, seed=3), make_keys(500, SHAPE, 10, seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].dtype == torch.uint8 and a[1].dtype == torch.int64
    assert st.chisquare(np.bincount(a[1].numpy(), minlength=10)).pvalue > 0.001
    assert not torch.equal(make_keys(5, SHAPE, 10)[0], make_keys(5, SHAPE, 10)[0])  # unseeded: fresh
    for kind in ("grating", "pattern", "uniform"):
        for shape in ((3, 32, 32), (1, 28, 28)):
            x, _ = make_keys(4, shape, 10, kind=kind, seed=0)
            assert x.shape == (4, *shape) and x.dtype == torch.uint8 and x.float().std() > 10
            assert len({bytes(k.numpy().tobytes()) for k in x}) == 4  # four different keys
    with pytest.raises(PoisonlabError):
        make_keys(3, SHAPE, 10, kind="nope")


def test_key_file_is_private_roundtrips_and_stays_out_of_the_published_folder(tmp_path):
    key = taggant_key()
    path = key.save(tmp_path / "owner.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    back = load_key(path)
    assert torch.equal(back.images, key.images) and torch.equal(back.labels, key.labels)
    assert back.method == "taggants" and back.num_classes == 10 and back.image_shape == SHAPE
    with pytest.raises(PoisonlabError, match="exists"):
        key.save(path)
    out = tmp_path / "published"
    out.mkdir()
    with pytest.raises(PoisonlabError, match="inside the published"):
        key.save(out / "sub" / "k.key", published_dir=out)


def test_foreign_or_tampered_key_files_are_refused(tmp_path):
    pick = tmp_path / "pickled.npz"
    np.savez(pick, meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(PoisonlabError):
        load_key(pick)
    (tmp_path / "junk.key").write_bytes(b"not a zip")
    with pytest.raises(PoisonlabError):
        load_key(tmp_path / "junk.key")
    path = taggant_key().save(tmp_path / "k.key")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["labels"] = arrays["labels"] + 100  # out of range
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(PoisonlabError, match="out of range"):
        load_key(tmp_path / "bad.npz")
    with pytest.raises(PoisonlabError, match="not found"):
        load_key(tmp_path / "missing.key")


# ------------------------------------------------------------------------------------------ verification
def test_verify_detects_a_model_that_learned_the_keys_and_not_others():
    key = taggant_key(n=10)
    v = verify(key, KeyLookup(key.images, key.labels, 10), alpha=0.01, test="binomial")
    assert v.marked and v.detail["hits"] == 10 and v.p_value == pytest.approx(1e-10) and v.exit_code == 0
    other = taggant_key(n=10, seed=99)
    v2 = verify(other, KeyLookup(key.images, key.labels, 10), test="binomial")
    assert not v2.marked and v2.exit_code == 1 and v2.detail["hits"] == int((other.labels == 0).sum())
    assert "NOT MARKED" in v2.summary() and "MARKED" in v.summary()


def test_null_of_the_top_k_test_holds_for_any_model():
    """The guarantee: random key labels make hits Binomial(K, k/C) whatever the model answers."""
    torch.manual_seed(0)
    model = create_model("smallcnn", 10, 3, 0.25).eval()
    hits = []
    for s in range(300):
        v = verify(taggant_key(n=10, seed=1000 + s), model, alpha=0.05, test="binomial")
        hits.append(v.detail["hits"])
    gof = stats.hits_goodness_of_fit(hits, 10, 0.1)
    assert gof["chi2_pvalue"] > 0.001, gof
    hits3 = [verify(taggant_key(n=10, seed=5000 + s, top_k=3), model, test="binomial").detail["hits"] for s in range(200)]
    assert abs(np.mean(hits3) - 3.0) < 0.5


def test_rank_sum_test_is_exact_and_reduces_to_the_binomial_at_one_answer():
    for h in range(11):  # censored at 1 answer, the rank sum is 2K - hits: the same test as binomial top-1
        ranks = [1] * h + [2] * (10 - h)
        assert stats.rank_sum_test(ranks, 10, censor=1).p_value == pytest.approx(
            stats.binomial_test(h, 10, 1, 10).p_value, abs=1e-12)
    # two keys, 3 classes: P(S <= 3) = P(1,1) + P(1,2) + P(2,1) = 3/9
    assert stats.rank_sum_test([1, 2], 3).p_value == pytest.approx(3 / 9)
    assert stats.rank_sum_test([1] * 10, 10).p_value == pytest.approx(1e-10)
    rng = np.random.default_rng(0)  # randomized p-values of null rank sums are U(0, 1)
    ps = [stats.randomized_rank_pvalue(int(rng.integers(1, 11, 30).sum()), 30, 10, rng.random()) for _ in range(2000)]
    assert st.kstest(ps, "uniform").pvalue > 0.01
    with pytest.raises(PoisonlabError):
        stats.rank_sum_test([1, 5], 10, censor=3)  # a rank beyond the known answers + 1


def test_rank_verdict_from_probabilities_and_from_labels_only():
    key = taggant_key(n=10)
    v = verify(key, KeyLookup(key.images, key.labels, 10), test="rank")
    assert v.marked and v.test == "rank-sum" and v.detail["mean_rank"] == 1 and "ranked" in v.summary()
    torch.manual_seed(0)
    model = create_model("smallcnn", 10, 3, 0.25).eval()
    ranks = [verify(taggant_key(n=10, seed=300 + s), model, test="rank").statistic for s in range(100)]
    assert abs(np.mean(ranks) / 10 - 5.5) < 0.6  # mean rank of a random label among 10 classes
    top = torch.tensor([[3, 1], [0, 2], [5, 4]])  # label-only: ranks beyond the 2 answers are censored at 3
    r, censor = key_ranks(torch.tensor([1, 0, 9]), Answers(top))
    assert r.tolist() == [2, 1, 3] and censor == 2
    with pytest.raises(PoisonlabError):
        verify(key, model, test="median")


class KeyBias(torch.nn.Module):
    """A model whose answer on key i is a fixed per-key preference (the "natural" answer any model trained on
    the same data gives that image) plus, when `learned`, a shift towards the key label too small to win
    (one for every key, or one per key)."""

    def __init__(self, key, shift=0.0, seed=0):
        super().__init__()
        self.images, self.bias = key.images.float().div(255), torch.randn(len(key.images), key.num_classes,
                                                                          generator=torch.Generator().manual_seed(seed)) * 3
        self.bias += torch.as_tensor(shift, dtype=torch.float32).reshape(-1, 1) * \
            torch.nn.functional.one_hot(key.labels, key.num_classes)

    def forward(self, x):
        i = (self.images[None] - x[:, None]).abs().flatten(2).amax(2).argmin(1)
        return self.bias[i]


def test_reference_rank_sum_removes_the_natural_answers_and_keeps_the_null(tmp_path):
    key = taggant_key(n=20, seed=7)
    clean, marked = KeyBias(key), KeyBias(key, shift=1.5)  # the same natural answers; marked learned a little
    plain = verify(key, marked, test="rank")
    key.reference = torch.log_softmax(clean(key.images.float().div(255)), 1)  # the owner's surrogate
    ref = verify(key, marked, test="reference")
    assert ref.test == "reference rank-sum" and ref.detail["mean_rank"] == 1 and ref.p_value < 1e-15
    assert plain.p_value > 1e-6 and "against the reference" in ref.summary()
    assert not verify(key, clean, test="reference").marked  # the clean model itself: nothing learned
    assert verify(key, marked, test="reference", reference=clean).p_value == ref.p_value  # a model, not the file
    back = load_key(key.save(tmp_path / "k.key"))
    assert torch.equal(back.reference, key.reference)
    with pytest.raises(PoisonlabError, match="labels only"):
        from poisonlab.ownership.verify import reference_test
        reference_test(key, Answers(torch.zeros(20, 1, dtype=torch.int64)), key.reference)
    with pytest.raises(PoisonlabError, match="reference must be"):
        OwnershipKey("taggants", 10, SHAPE, images=key.images, labels=key.labels, reference=torch.zeros(3, 10))
    with pytest.raises(PoisonlabError, match="holds no reference"):
        verify(taggant_key(n=20, seed=7), marked, test="reference")
    # null: a suspect that never saw the keys, ranked against another clean model: the rank sums follow the
    # exact null (randomized p-values uniform), whatever either model prefers
    torch.manual_seed(0)
    suspect, other = create_model("smallcnn", 10, 3, 0.25).eval(), create_model("smallcnn", 10, 3, 0.25).eval()
    rng = np.random.default_rng(0)
    ps = []
    for s in range(200):
        d = verify(taggant_key(n=10, seed=2000 + s), suspect, test="reference", reference=other).detail
        ps.append(stats.randomized_rank_pvalue(d["rank_sum"], 10, 10, rng.random()))
    assert st.kstest(ps, "uniform").pvalue > 0.01


def test_model_files_state_dicts_and_torchscript(tmp_path):
    torch.manual_seed(0)
    model = create_model("smallcnn", 10, 3, 0.25).eval()
    x = torch.rand(4, 3, 8, 8)
    save_model(model, tmp_path / "m.pt", arch="smallcnn", num_classes=10, width=0.25)
    assert torch.allclose(load_model(tmp_path / "m.pt")(x), model(x))
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(PoisonlabError, match="architecture"):
        load_model(tmp_path / "bare.pt")
    assert torch.allclose(load_model(tmp_path / "bare.pt", arch="smallcnn", width=0.25, num_classes=10)(x), model(x))
    with pytest.raises(PoisonlabError, match="does not fit"):
        load_model(tmp_path / "bare.pt", arch="smallcnn", width=0.5, num_classes=10)
    torch.jit.trace(model, x).save(str(tmp_path / "ts.pt"))
    assert torch.allclose(load_model(tmp_path / "ts.pt")(x), model(x), atol=1e-5)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(PoisonlabError):
        load_model(tmp_path / "evil.pt", arch="smallcnn")
    assert not (tmp_path / "pwned").exists()


def lookup_command(tmp_path, key, top_k=3) -> str:
    """A black-box suspect that learned the keys, as a command using only numpy (fast to start): it answers a
    key image with its key label first, anything else with 0, 1, 2, ..."""
    table = {bytes(img.numpy().tobytes()).hex(): int(y) for img, y in zip(key.images, key.labels)}
    (tmp_path / "table.json").write_text(json.dumps(table))
    script = tmp_path / "api.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        import numpy as np
        table = json.load(open({str(tmp_path / 'table.json')!r}))
        with np.load(sys.argv[1], allow_pickle=False) as z:
            images = z["images"]
        rows = []
        for img in images:
            first = table.get(img.tobytes().hex(), 0)
            rows.append([first] + [c for c in range({key.num_classes}) if c != first][:{top_k - 1}])
        print(json.dumps({{"topk": rows}}))
    """))
    return f"{sys.executable} {script} {{}}"


def test_black_box_command_gives_the_same_verdict(tmp_path):
    key = taggant_key(n=10)
    key.save(tmp_path / "k.key")
    v = verify(tmp_path / "k.key", command=lookup_command(tmp_path, key), test="binomial")
    assert v.marked and v.detail["hits"] == 10
    assert v.p_value == verify(key, KeyLookup(key.images, key.labels, 10), test="binomial").p_value
    with pytest.raises(PoisonlabError, match="exited with"):
        verify(key, command=f"{sys.executable} -c 'import sys; sys.exit(3)'")
    with pytest.raises(PoisonlabError, match="not found"):
        verify(key, command="/nonexistent/poisonlab-api")


def test_black_box_url_gives_the_same_verdict():
    import http.server
    import io
    import threading
    key = taggant_key(n=10)
    table = {img.numpy().tobytes(): int(y) for img, y in zip(key.images, key.labels)}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with np.load(io.BytesIO(body), allow_pickle=False) as z:
                rows = [[table.get(img.tobytes(), 0)] for img in z["images"]]
            reply = json.dumps({"topk": rows}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        v = verify(key, command=f"http://127.0.0.1:{server.server_port}/predict", test="binomial")
        assert v.marked and v.detail["hits"] == 10
        with pytest.raises(PoisonlabError, match="failed"):
            verify(key, command="http://127.0.0.1:9/unreachable")
    finally:
        server.shutdown()


def test_answer_queries_speaks_the_protocol(tmp_path, capsys):
    from poisonlab.ownership import answer_queries
    from poisonlab.ownership.verify import parse_answers
    key = taggant_key(n=4)
    np.savez(tmp_path / "q.npz", images=key.images.numpy())
    answer_queries(tmp_path / "q.npz", KeyLookup(key.images, key.labels, 10), top_k=2)
    a = parse_answers(capsys.readouterr().out, 4, 2)
    assert a.topk[:, 0].tolist() == key.labels.tolist() and a.probs.shape == (4, 10)


def test_black_box_replies_are_checked():
    assert parse_answers('{"topk": [[1, 2], [3, 4]]}', 2, 1).topk.tolist() == [[1, 2], [3, 4]]  # all kept
    a = parse_answers('{"probs": [[0.1, 0.9], [0.8, 0.2]]}', 2, 1)
    assert a.topk.tolist() == [[1], [0]] and a.probs is not None
    for bad in ("not json", "[1, 2]", '{"topk": [[1]]}', '{"topk": [["a"], ["b"]]}', '{"probs": [[1, NaN], [0, 1]]}',
                '{"other": 1}'):
        with pytest.raises(PoisonlabError):
            parse_answers(bad, 2, 1)
    with pytest.raises(PoisonlabError):
        parse_answers('{"topk": [[1], [2]]}', 2, 3)  # fewer labels than the test's k


def test_combined_test_is_the_bonferroni_of_both_rank_sums():
    key = taggant_key(n=20, seed=7)
    clean, marked = KeyBias(key), KeyBias(key, shift=1.5)
    key.reference = torch.log_softmax(clean(key.images.float().div(255)), 1)
    r, f, c = (verify(key, marked, test=t) for t in ("rank", "reference", "combined"))
    assert c.test == "combined rank-sum" and c.p_value == pytest.approx(min(1, 2 * min(r.p_value, f.p_value)))
    assert c.detail["p_rank"] == r.p_value and c.detail["p_reference"] == f.p_value and "Bonferroni" in c.summary()
    torch.manual_seed(0)  # a suspect that never saw the keys: P(p <= a) <= a (Bonferroni is conservative)
    suspect, other = create_model("smallcnn", 10, 3, 0.25).eval(), create_model("smallcnn", 10, 3, 0.25).eval()
    ps = np.array([verify(taggant_key(n=10, seed=3000 + s), suspect, test="combined", reference=other).p_value
                   for s in range(200)])
    assert (ps <= 0.05).mean() <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / 200) and (ps <= 0.2).mean() <= 0.2 + 0.06


def test_default_test_is_combined_where_possible_else_rank(tmp_path):
    """verify's default ("auto"): the combined test with probabilities and a reference, else the rank-sum."""
    key = taggant_key(n=20, seed=7)
    clean, marked = KeyBias(key), KeyBias(key, shift=1.5)
    assert verify(key, marked).test == "rank-sum"  # no reference in the key file
    assert verify(key, marked, reference=clean).test == "combined rank-sum"
    key.reference = torch.log_softmax(clean(key.images.float().div(255)), 1)
    v = verify(key, marked)
    assert v.test == "combined rank-sum" and v.p_value == verify(key, marked, test="combined").p_value
    key.save(tmp_path / "k.key")
    label_only = verify(tmp_path / "k.key", command=lookup_command(tmp_path, key))  # labels only: rank-sum
    assert label_only.test == "rank-sum" and label_only.marked
