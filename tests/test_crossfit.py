"""RefusalProbe.cross_fit / CrossFit: out-of-fold scores, held-out metrics, probe per rollout, save/load."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from cliff_lens.probe import CrossFit, ProbeLoadError, RefusalProbe, _tensor_hash

D = 16


def planted(n: int = 120, d: int = D, margin: float = 2.0, seed: int = 0):
    """Gaussian activations, classes separated by ``2 * margin`` along one unit direction ``u``."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    u /= u.norm()
    y = torch.arange(n) % 2
    x = torch.randn(n, d, generator=g) + (2 * y[:, None] - 1).float() * margin * u
    return x, y, u


@pytest.fixture(scope="module")
def data():
    x, y, u = planted()
    ids = [f"r{i}" for i in range(len(y))]
    cf = RefusalProbe.cross_fit(x, y, k=5, ids=ids, seed=0)
    return x, y, u, ids, cf


def test_planted_direction_heldout_metrics(data):
    x, y, u, _, cf = data
    acc, auc = cf.metrics["accuracy"], cf.metrics["auroc"]
    assert cf.k == 5 and cf.n == 120 and cf.metrics["n"] == 120
    assert acc["value"] > 0.9 and acc["n"] == 120
    assert acc["ci95"][0] <= acc["value"] <= acc["ci95"][1] and acc["ci95"][0] > 0.8
    assert auc["value"] > 0.97 and auc["ci95"][0] <= auc["value"] <= auc["ci95"][1]
    # the Bayes accuracy for a margin of 2 is Phi(2) = 0.977: the interval covers it
    assert acc["ci95"][0] <= 0.977 <= acc["ci95"][1]
    # every fold probe and the final probe find the planted direction
    for p in (*cf.probes, cf.final):
        assert float(p.direction @ u) > 0.9
    # out-of-fold accuracy is recomputable from the stored out-of-fold scores
    assert ((cf.oof_score >= 0.5).long() == y).float().mean().item() == pytest.approx(acc["value"])
    assert len(cf.metrics["folds"]) == 5 and sum(f["n"] for f in cf.metrics["folds"]) == 120


def test_heldout_numbers_are_not_in_sample():
    """Random labels, d close to n: in-sample accuracy is ~1, the held-out one stays at chance."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(60, 80, generator=g)
    y = torch.randperm(60, generator=g) % 2
    cf = RefusalProbe.cross_fit(x, y, k=5, C=100.0)
    assert cf.final.metrics["train"]["accuracy"] > 0.95 and cf.final.metrics["train"]["in_sample"] is True
    lo, hi = cf.metrics["accuracy"]["ci95"]
    assert lo <= 0.5 <= hi
    lo, hi = cf.metrics["auroc"]["ci95"]
    assert lo <= 0.5 <= hi


def test_fold_probes_never_saw_their_heldout_examples(data):
    x, y, _, _, cf = data
    # stratified folds partition the examples; class balance within one example per fold
    assert sorted(set(cf.fold.tolist())) == list(range(5))
    for i, p in enumerate(cf.probes):
        te = cf.fold == i
        assert torch.equal(cf.heldout(i), te.nonzero().flatten())
        assert abs(int(y[te].sum()) - int((1 - y[te]).sum())) <= 1
        # trained exactly on the other folds: its recorded data hash and a refit agree
        assert p.meta["data_hashes"]["acts"] == _tensor_hash(x[~te])
        assert p.meta["n_train"] == int((~te).sum()) and p.meta["n_heldout"] == int(te.sum())
        ref = RefusalProbe.fit(x[~te], y[~te], val_fraction=0, seed=0)
        assert torch.allclose(ref.direction, p.direction, atol=1e-6)
        assert ref.bias == pytest.approx(p.bias) and ref.scale == pytest.approx(p.scale)
        # the out-of-fold logits are this probe's logits on its held-out fold
        assert torch.allclose(cf.oof_logit[te], p.logit(x[te]), atol=1e-5)
        assert p.metrics["heldout"]["n"] == int(te.sum())


def test_changing_heldout_examples_leaves_their_fold_probe_unchanged(data):
    x, y, _, _, cf = data
    te = cf.fold == 0
    x2 = x.clone()
    x2[te] = torch.randn(int(te.sum()), D, generator=torch.Generator().manual_seed(9)) * 5
    cf2 = RefusalProbe.cross_fit(x2, y, k=5, seed=0)
    assert torch.equal(cf2.fold, cf.fold)  # folds depend on the labels and the seed only
    assert torch.equal(cf2.probes[0].direction, cf.probes[0].direction)
    assert cf2.probes[0].bias == cf.probes[0].bias
    assert not torch.allclose(cf2.probes[1].direction, cf.probes[1].direction)


def test_final_probe_is_fit_on_everything_and_carries_cv_metrics(data):
    x, y, _, _, cf = data
    ref = RefusalProbe.fit(x, y, val_fraction=0, seed=0)
    assert torch.allclose(cf.final.direction, ref.direction, atol=1e-6)
    assert cf.final.meta["n_train"] == 120 and cf.final.meta["n_val"] == 0
    m = cf.final.metrics
    assert m["cv"] is cf.metrics and m["cv"]["k"] == 5 and m["cv"]["grouped"] is False
    # readers of metrics["val"] get the held-out (out-of-fold) numbers, labelled as such
    assert m["val"]["accuracy"] == cf.metrics["accuracy"]["value"]
    assert m["val"]["auroc"] == cf.metrics["auroc"]["value"]
    assert m["val"]["accuracy_ci95"] == cf.metrics["accuracy"]["ci95"] and "out-of-fold" in m["val"]["source"]
    assert m["train"]["in_sample"] is True


def test_deterministic_with_a_seed(data):
    x, y, _, ids, cf = data
    again = RefusalProbe.cross_fit(x, y, k=5, ids=ids, seed=0)
    assert torch.equal(again.fold, cf.fold) and torch.equal(again.oof_logit, cf.oof_logit)
    assert all(torch.equal(a.direction, b.direction) for a, b in zip(again.probes, cf.probes))
    assert again.metrics == cf.metrics
    other = RefusalProbe.cross_fit(x, y, k=5, seed=1)
    assert not torch.equal(other.fold, cf.fold)


def test_probe_for_maps_each_rollout_to_a_probe_that_did_not_see_it(data):
    x, y, _, ids, cf = data
    for i in (0, 7, 119):
        f = int(cf.fold[i])
        assert cf.fold_for(i) == f and cf.probe_for(i) is cf.probes[f]
        assert cf.probe_for(id=ids[i]) is cf.probes[f]
    # not in the training set (e.g. a complied harmful rollout): the final probe
    assert cf.fold_for(id="complied-1") is None and cf.probe_for(id="complied-1") is cf.final
    assert cf.probe_for() is cf.final
    with pytest.raises(IndexError, match="out of range"):
        cf.probe_for(120)
    with pytest.raises(ValueError, match="not both"):
        cf.probe_for(1, id="r1")
    parts = cf.split_by_probe(["r3", "new", "r4", "r5"])
    assert [f for f, _, _ in parts][-1] is None and parts[-1][2] == [1] and parts[-1][1] is cf.final
    flat = sorted(pos for _, _, ps in parts for pos in ps)
    assert flat == [0, 1, 2, 3]
    for f, p, ps in parts:
        if f is not None:
            assert p is cf.probes[f] and all(
                int(cf.fold[int(["r3", "new", "r4", "r5"][q][1:])]) == f for q in ps
            )


def test_groups_stay_in_one_fold_and_unseen_rollouts_of_a_group_get_its_fold_probe():
    x, y, _ = planted(n=120)
    groups = [f"prompt{i // 4}" for i in range(120)]  # 30 prompts, 4 rollouts each
    y = torch.tensor([int(g[6:]) % 2 for g in groups])  # one class per prompt
    cf = RefusalProbe.cross_fit(x, y, k=5, groups=groups, seed=0)
    assert cf.metrics["grouped"] is True and cf.k == 5
    for gname in set(groups):
        folds = {int(cf.fold[i]) for i, g in enumerate(groups) if g == gname}
        assert len(folds) == 1
        # a rollout of this prompt that was not trained on (say it complied): that fold's probe
        assert cf.probe_for(id=None, group=gname) is cf.probes[folds.pop()]
    assert cf.probe_for(group="unknown prompt") is cf.final
    with pytest.raises(ValueError, match="no ids"):
        cf.probe_for(id="r1")


def test_small_classes_lower_k_with_a_note():
    x, _, _ = planted(n=40)
    y = torch.zeros(40, dtype=torch.long)
    y[:3] = 1
    with pytest.warns(UserWarning, match="k lowered from 5 to 3"):
        cf = RefusalProbe.cross_fit(x, y, k=5)
    assert cf.k == 3 and cf.metrics["k"] == 3 and cf.metrics["k_requested"] == 5
    assert "refusal (label 1) class has only 3 examples" in cf.metrics["note"]
    assert all(int(y[cf.fold == i].sum()) == 1 for i in range(3))


def test_too_few_examples_of_a_class_raise():
    x = torch.randn(10, 4)
    with pytest.raises(
        ValueError, match=r"labels: the refusal \(label 1\) class has 1 examples.*Add examples"
    ):
        RefusalProbe.cross_fit(x, [1] + [0] * 9)
    with pytest.raises(ValueError, match="only one class"):
        RefusalProbe.cross_fit(x, [0] * 10)
    groups = ["a"] * 5 + ["b", "b", "c", "c", "c"]
    with pytest.raises(ValueError, match=r"non-refusal \(label 0\) class has 1 groups.*groups=None"):
        RefusalProbe.cross_fit(x, [0] * 5 + [1] * 5, groups=groups)
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        RefusalProbe.cross_fit(x, [0, 1] * 5, k=1)
    with pytest.raises(ValueError, match="drop val_fraction"):
        RefusalProbe.cross_fit(x, [0, 1] * 5, val_fraction=0.2)
    with pytest.raises(ValueError, match="10 activations but 3 groups"):
        RefusalProbe.cross_fit(x, [0, 1] * 5, groups=["a", "b", "c"])
    with pytest.raises(ValueError, match="ids must be unique"):
        RefusalProbe.cross_fit(x, [0, 1] * 5, ids=["a"] * 10)


def test_save_load_roundtrip(data, tmp_path):
    x, y, _, ids, _ = data
    model = SimpleNamespace(cfg=SimpleNamespace(d_model=D, model_name="toy"), cliff_template="generic")
    groups = [f"p{i // 2}" for i in range(120)]
    yy = torch.tensor([int(g[1:]) % 2 for g in groups])
    cf = RefusalProbe.cross_fit(
        x, yy, k=4, ids=ids, groups=groups, method="diff_of_means", hook="blocks.{L}.hook_resid_post", layer=1,
        model=model, meta={"n_refusal": int(yy.sum())},
    )  # fmt: skip
    st, js = cf.save(tmp_path / "probe_folds")
    cf.final.save(tmp_path / "probe")
    assert st.name == "probe_folds.safetensors" and js.name == "probe_folds.json"
    info = json.loads(js.read_text())
    assert info["k"] == 4 and info["model_name"] == "toy" and info["settings"]["method"] == "diff_of_means"
    final = RefusalProbe.load(tmp_path / "probe", model=model)
    back = CrossFit.load(tmp_path / "probe_folds", model=model, final=final)
    assert back.final is final and back.k == 4 and back.n == 120
    assert torch.equal(back.fold, cf.fold) and torch.equal(back.labels, cf.labels)
    assert torch.equal(back.oof_logit, cf.oof_logit)
    assert back.ids == cf.ids and back.groups == cf.groups and back.metrics == cf.metrics
    for a, b in zip(back.probes, cf.probes):
        assert torch.equal(a.direction, b.direction) and (a.bias, a.scale, a.layer) == (
            b.bias,
            b.scale,
            b.layer,
        )
        assert a.hook == b.hook and a.metrics == b.metrics
    assert back.final.metrics["cv"] == cf.metrics
    assert back.probe_for(id="r5") is back.probes[int(cf.fold[5])]
    assert back.probe_for(group="p3") is back.probes[int(cf.fold[6])]
    # without final=, the stored final probe is rebuilt
    alone = CrossFit.load(js)
    assert torch.equal(alone.final.direction, cf.final.direction) and alone.final.bias == cf.final.bias
    # a final probe from another fit: the folds file is stale
    other = RefusalProbe.cross_fit(x, y, k=3, seed=0).final
    with pytest.raises(ProbeLoadError, match="stale"):
        CrossFit.load(tmp_path / "probe_folds", final=other)
    wide = SimpleNamespace(cfg=SimpleNamespace(d_model=D + 1, model_name="toy"))
    with pytest.raises(ProbeLoadError, match="d_model"):
        CrossFit.load(tmp_path / "probe_folds", model=wide)


def test_load_rejects_missing_corrupt_and_mixed_files(data, tmp_path):
    *_, cf = data
    st, js = cf.save(tmp_path / "f")
    with pytest.raises(ProbeLoadError, match="does not exist"):
        CrossFit.load(tmp_path / "nope")
    good = st.read_bytes()
    st.write_bytes(good[: len(good) // 2])
    with pytest.raises(ProbeLoadError, match="corrupt or truncated"):
        CrossFit.load(st)
    st.write_bytes(good)
    # a RefusalProbe file is not a CrossFit file
    cf.final.save(tmp_path / "p")
    with pytest.raises(ProbeLoadError, match="not a cross-fit file"):
        CrossFit.load(tmp_path / "p")
    info = json.loads(js.read_text())
    info["folds"][0]["bias"] = "x"
    js.write_text(json.dumps(info))
    with pytest.raises(ProbeLoadError, match=r"\(fold 0\) is corrupt"):
        CrossFit.load(js)
    info["folds"][0]["bias"] = cf.probes[0].bias
    info["tensor_hashes"]["fold"] = "0" * 16
    js.write_text(json.dumps(info))
    with pytest.raises(ProbeLoadError, match="'fold' does not match"):
        CrossFit.load(js)
