"""RefusalProbe: recovers a planted direction; metrics; save/load; bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import project_out_direction, rotary_tl_model

from cliff_lens.activations import extract_activations
from cliff_lens.probe import ProbeLoadError, RefusalProbe, probe_metrics

D, V = 32, 50
MARK, PLAIN = V - 1, V - 2  # the refusal marker = PLAIN's embedding + alpha * d


def planted_model(alpha: float = 1.0, seed: int = 0, d_model: int = D, name: str = "planted"):
    """Tiny model with a private residual channel along a unit direction ``d``.

    No block reads or writes ``d`` (it is projected out of every read and write weight and
    there is no layer norm), so the residual's component along ``d`` at any layer equals the
    token embedding's: ``MARK`` carries ``alpha * d``, every other token carries 0.
    """
    m = rotary_tl_model(
        d_model=d_model, d_vocab=V, act_fn="gelu", normalization_type=None, seed=seed, model_name=name
    )
    g = torch.Generator().manual_seed(seed + 100)
    d = torch.randn(d_model, generator=g)
    d /= d.norm()
    project_out_direction(m, d)
    with torch.no_grad():
        m.embed.W_E[MARK] = m.embed.W_E[PLAIN] + alpha * d
    return m, d


def planted_data(n: int, seed: int):
    """Random prompts of mixed length; refusal ones end in MARK, the others in PLAIN."""
    g = torch.Generator().manual_seed(seed)
    seqs, y = [], []
    for i in range(n):
        L = int(torch.randint(4, 20, (1,), generator=g))
        s = torch.randint(0, V - 2, (L,), generator=g)
        lab = i % 2
        s[-1] = MARK if lab else PLAIN
        seqs.append(s)
        y.append(lab)
    return seqs, torch.tensor(y)


@pytest.fixture(scope="module")
def planted():
    m, d = planted_model()
    seqs, y = planted_data(200, seed=1)
    acts = extract_activations(m, seqs, layer=1, progress=False)
    return m, d, acts, y


@pytest.mark.parametrize("method", ["logistic", "diff_of_means"])
def test_probe_recovers_planted_direction(planted, method):
    m, d, acts, y = planted
    probe = RefusalProbe.fit(acts, y, method=method, hook="blocks.{L}.hook_resid_post", layer=1, model=m)
    cos = float(probe.direction @ d)
    assert cos > 0.95, cos
    assert probe.metrics["val"]["accuracy"] > 0.95
    assert probe.metrics["val"]["auroc"] > 0.95
    assert probe.metrics["val"]["n"] == 40  # 20% held out, stratified
    assert abs(float(probe.direction.norm()) - 1) < 1e-5 and probe.direction.dtype == torch.float32
    # the probe scores raw activations directly
    s = probe.score(acts)
    assert ((s >= 0.5).long() == y).float().mean() > 0.95
    assert torch.allclose(probe.logit(acts), acts @ probe.w + probe.bias, atol=1e-4)
    assert probe.meta["model_name"] == "planted" and probe.meta["d_model"] == D


def test_feature_standardisation_is_folded_back_exactly(planted):
    """score(raw acts) equals sklearn's predict_proba on the standardised features it was fitted on."""
    from sklearn.linear_model import LogisticRegression

    _, _, acts, y = planted
    probe = RefusalProbe.fit(acts, y, val_fraction=0, standardize="feature", C=0.5)
    mu, sd = acts.mean(0), acts.std(0, unbiased=False)
    z = ((acts - mu) / sd).double().numpy()
    ref = LogisticRegression(C=0.5, max_iter=2000).fit(z, y.numpy()).predict_proba(z)[:, 1]
    assert np.abs(probe.score(acts).numpy() - ref).max() < 1e-4
    assert "val" not in probe.metrics and probe.metrics["train"]["n"] == 200


def test_evaluate_on_an_extra_labelled_set(planted):
    m, _, acts, y = planted
    probe = RefusalProbe.fit(acts, y)
    seqs, y2 = planted_data(60, seed=7)
    ood = extract_activations(m, seqs, layer=1, progress=False)
    res = probe.evaluate(ood, y2, name="ood")
    assert res["accuracy"] > 0.95 and res["n"] == 60
    assert probe.metrics["ood"]["accuracy"] == res["accuracy"]
    # flipped labels: the metric must notice
    assert probe.evaluate(ood, 1 - y2)["accuracy"] < 0.05


def test_probe_metrics_values():
    m = probe_metrics(torch.tensor([0.9, 0.8, 0.3, 0.1]), torch.tensor([1, 1, 0, 1]))
    assert m["accuracy"] == 0.75
    assert m["auroc"] == pytest.approx(2 / 3)
    assert m["brier"] == pytest.approx((0.01 + 0.04 + 0.09 + 0.81) / 4)
    perfect = probe_metrics(torch.tensor([1.0, 0.0]), torch.tensor([1, 0]))
    assert perfect["brier"] == 0 and perfect["ece"] == 0


def test_save_load_roundtrip(planted, tmp_path):
    m, _, acts, y = planted
    probe = RefusalProbe.fit(
        acts,
        y,
        hook="blocks.{L}.hook_resid_post",
        layer=1,
        position_rule="last",
        model=m,
        meta={"data_hashes": {"rollouts": "abc"}, "template": "generic"},
    )
    st, js = probe.save(tmp_path / "probe")
    assert st.name == "probe.safetensors" and js.name == "probe.json"
    info = json.loads(js.read_text())
    assert info["model_name"] == "planted" and info["d_model"] == D and info["layer"] == 1
    assert info["position_rule"] == "last" and info["template"] == "generic"
    assert info["metrics"]["val"]["accuracy"] > 0.95 and info["meta"]["data_hashes"]["rollouts"] == "abc"
    back = RefusalProbe.load(tmp_path / "probe", model=m)
    assert torch.equal(back.direction, probe.direction)
    assert back.bias == probe.bias and back.scale == probe.scale and back.hook == probe.hook
    assert torch.allclose(back.score(acts), probe.score(acts))
    assert back.metrics == probe.metrics
    # loading by either file name works too
    assert RefusalProbe.load(st).layer == 1


def test_load_refuses_another_model(planted, tmp_path):
    m, _, acts, y = planted
    RefusalProbe.fit(acts, y, model=m).save(tmp_path / "p")
    wide, _ = planted_model(d_model=48, name="wide")
    with pytest.raises(ProbeLoadError, match="d_model=32.*'planted'.*d_model=48.*'wide'"):
        RefusalProbe.load(tmp_path / "p", model=wide)
    other, _ = planted_model(seed=3, name="other")
    with pytest.raises(ProbeLoadError, match="'planted'.*'other'"):
        RefusalProbe.load(tmp_path / "p", model=other)
    assert RefusalProbe.load(tmp_path / "p", model=other, strict_name=False).d_model == D


def test_corrupt_or_missing_files(planted, tmp_path):
    _, _, acts, y = planted
    RefusalProbe.fit(acts, y).save(tmp_path / "p")
    st = tmp_path / "p.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    with pytest.raises(ProbeLoadError, match="corrupt or truncated"):
        RefusalProbe.load(tmp_path / "p")
    st.write_bytes(data)
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(ProbeLoadError, match="p.json is corrupt"):
        RefusalProbe.load(tmp_path / "p")
    with pytest.raises(ProbeLoadError, match="does not exist"):
        RefusalProbe.load(tmp_path / "nope")


def test_bad_training_data():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="empty"):
        RefusalProbe.fit(torch.zeros(0, 4), [])
    with pytest.raises(ValueError, match="only one class"):
        RefusalProbe.fit(x, [1] * 10)
    with pytest.raises(ValueError, match="single example"):
        RefusalProbe.fit(x, [1] + [0] * 9)
    with pytest.raises(ValueError, match="must match"):
        RefusalProbe.fit(x, [0, 1])
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"row\(s\) \[3\]"):
        RefusalProbe.fit(bad, [0, 1] * 5)
    with pytest.raises(ValueError, match="0/1"):
        RefusalProbe.fit(x, [0, 2] * 5)
    # one example per class is fine without a validation split
    assert RefusalProbe.fit(x[:2], [0, 1], val_fraction=0).d_model == 4
    with pytest.raises(ValueError, match="d_model=4"):
        RefusalProbe.fit(x, [0, 1] * 5).score(torch.randn(3, 5))


def test_cross_fit_on_the_planted_model(planted):
    """Out-of-fold scores on real activations: held-out accuracy near 1, with an interval around it."""
    m, d, acts, y = planted
    cf = RefusalProbe.cross_fit(acts, y, k=5, hook="blocks.{L}.hook_resid_post", layer=1, model=m)
    acc, auc = cf.metrics["accuracy"], cf.metrics["auroc"]
    assert acc["n"] == 200 and acc["value"] > 0.95 and acc["ci95"][0] <= acc["value"] <= acc["ci95"][1]
    assert auc["value"] > 0.95 and auc["ci95"][0] > 0.9
    assert all(float(p.direction @ d) > 0.95 for p in cf.probes)
    assert cf.final.meta["n_train"] == 200 and cf.final.metrics["val"]["accuracy"] == acc["value"]
    assert cf.final.metrics["cv"]["k"] == 5 and cf.final.meta["model_name"] == "planted"
