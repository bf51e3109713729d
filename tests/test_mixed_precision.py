"""Mixed precision: the exact allocation (against brute force and greedy), per-layer bits in
quantize_model / save / load, the sensitivity measures checked against direct computations,
and clear errors."""
import copy
import itertools
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genie.errors import GenieError
from genie.quant import load_quantized, quantize_model, reconstruct, save_quantized
from genie.quant.allocation import (allocate, allocate_greedy, budget_weight_bits, pareto_front,
                                    uniform_allocation)
from genie.quant.sensitivity import SensitivityTable, measure_sensitivity


def _random_table(rng, layers, bits=(2, 3, 4, 8), fixed=None, monotone=True):
    params = [int(rng.choice([16, 48, 64, 144, 256, 432])) for _ in range(layers)]
    scores = []
    for _ in range(layers):
        row = rng.exponential(1.0, len(bits))
        scores.append(sorted(row, reverse=True) if monotone else list(row))
    names = [f"l{i}" for i in range(layers)]
    fixed = fixed or {}
    return SensitivityTable(layers=names, sources=names, params=params, bits=list(bits),
                            scores=[[float(v) for v in r] for r in scores], fixed=fixed, method="kl",
                            setting="brecq", fold_bn=True, weight_symmetric=False, images=1, seconds=0.0,
                            model="random", fingerprint="0", order=list(fixed) + names)


def _brute_force(table, limit_bits):
    best = None
    for choice in itertools.product(range(len(table.bits)), repeat=len(table.layers)):
        mem = sum(p * table.bits[j] for p, j in zip(table.params, choice))
        mem += sum(b * p for b, p in table.fixed.values())
        if mem <= limit_bits:
            cost = sum(table.scores[i][j] for i, j in enumerate(choice))
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_allocation_equals_brute_force_and_is_never_worse_than_greedy(seed):
    rng = np.random.default_rng(seed)
    table = _random_table(rng, layers=int(rng.integers(2, 6)), bits=(2, 3, 4, 8)[: int(rng.integers(2, 5))],
                          fixed={"first": [8, 27]} if seed % 2 else None, monotone=seed % 3 != 0)
    front = pareto_front(table)
    for budget in (table.bits[0], table.bits[0] + 0.37, 2.5, 3, 3.9, table.bits[-1]):
        if budget < table.bits[0]:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # budgets above the top candidate (tested below)
            alloc = allocate(table, budget, front)
        limit = budget_weight_bits(table, budget)
        assert alloc.weight_bits <= limit
        assert alloc.predicted == pytest.approx(_brute_force(table, limit), rel=1e-12, abs=1e-12)
        assert alloc.predicted <= allocate_greedy(table, budget).predicted + 1e-12
        # the chosen bits give the memory and the cost it reports
        assert alloc.weight_bits == sum(table.params[i] * alloc.bits[n] for i, n in enumerate(table.layers)) \
            + sum(b * p for b, p in table.fixed.values())


def test_the_front_is_pareto_optimal_and_complete():
    table = _random_table(np.random.default_rng(7), layers=4, monotone=False)
    front = pareto_front(table)
    mems = [a.weight_bits for a in front]
    costs = [a.predicted for a in front]
    assert mems == sorted(mems) and all(b < a for a, b in zip(costs, costs[1:]))
    points = set()
    for choice in itertools.product(range(4), repeat=4):
        points.add((sum(p * table.bits[j] for p, j in zip(table.params, choice)),
                    sum(table.scores[i][j] for i, j in enumerate(choice))))
    for mem, cost in points:  # every allocation is dominated by (or is) a point of the front
        assert any(m <= mem and c <= cost + 1e-12 for m, c in zip(mems, costs))


def test_a_budget_of_b_bits_is_the_uniform_wb_memory():
    table = _random_table(np.random.default_rng(3), layers=5, fixed={"first": [8, 27], "last": [8, 640]})
    for b in (2, 3, 4):
        uniform = uniform_allocation(table, b)
        assert uniform.weight_bits == budget_weight_bits(table, b)
        alloc = allocate(table, b)
        assert alloc.weight_bits <= uniform.weight_bits and alloc.predicted <= uniform.predicted
        assert alloc.bits["first"] == alloc.bits["last"] == 8
        assert alloc.weight_bytes == sum(-(-p * bits // 8) for p, bits in
                                         [(27, 8), (640, 8)] + [(table.params[i], alloc.bits[n])
                                                                for i, n in enumerate(table.layers)])


def test_budget_errors_name_the_minimum_and_above_the_top_warns():
    table = _random_table(np.random.default_rng(1), layers=3)
    with pytest.raises(GenieError, match="below the smallest memory.*2 bits per weight"):
        allocate(table, 1.5)
    with pytest.warns(UserWarning, match="does not constrain"):
        alloc = allocate(table, 9)
    assert set(alloc.bits.values()) == {8}  # monotone scores: the top candidate everywhere
    for bad in (0, -1, float("nan"), "3", True):
        with pytest.raises(GenieError, match="positive number of bits"):
            allocate(table, bad)


# --- per-layer bits in the quantized model --------------------------------------------------

def test_quantize_model_takes_bits_per_layer_by_either_name(resnet20, calib64):
    qm8 = quantize_model(resnet20, calib64[:8], w_bits=8, quantizer="nearest")
    free = [n for n, _ in qm8.layers() if n not in qm8.fixed_w_bits]
    assert qm8.fixed_w_bits == {"conv1": 8, "linear": 8}
    sources = qm8.layer_sources()
    assert sources["layer1.0.main.0"] == "layer1.0.conv1" and sources["layer3.2.main.4"] == "layer3.2.conv2"
    plan = {(sources[n] if i % 2 else n): np.int64((2, 3, 4)[i % 3]) for i, n in enumerate(free)}
    qm = quantize_model(resnet20, calib64[:8], w_bits=plan, quantizer="adaround")
    got = qm.weight_bits()
    assert got["conv1"] == got["linear"] == 8
    for i, n in enumerate(free):
        assert got[n] == (2, 3, 4)[i % 3]
        assert qm.net.get_submodule(n).weight_quant.qmax == 2 ** got[n] - 1
    assert qm.config.w_bits == got and qm.config.mixed


def test_bad_bit_plans_get_one_clear_line(resnet20, calib64):
    x = calib64[:4]
    free = {n: 4 for n, _ in quantize_model(resnet20, x, quantizer="nearest").layers() if n not in ("conv1", "linear")}
    with pytest.raises(GenieError, match=r"does not have: layer9\.conv1.*quantized layers are: conv1, layer1\.0\.main\.0"):
        quantize_model(resnet20, x, w_bits={**free, "layer9.conv1": 4})
    with pytest.raises(GenieError, match="gives no bits for 1 layer.*layer3.2.main.4"):
        quantize_model(resnet20, x, w_bits={k: v for k, v in free.items() if k != "layer3.2.main.4"})
    with pytest.raises(GenieError, match="keeps it at 8.*setting='all'"):
        quantize_model(resnet20, x, w_bits={**free, "conv1": 4})
    with pytest.raises(GenieError, match=r"w_bits\['layer1.0.main.0'\] must be an integer from 2 to 8"):
        quantize_model(resnet20, x, w_bits={**free, "layer1.0.main.0": 9})
    with pytest.raises(GenieError, match="two bit widths"):
        quantize_model(resnet20, x, w_bits={**free, "layer1.0.conv1": 3})
    with pytest.raises(GenieError, match="empty dict"):
        quantize_model(resnet20, x, w_bits={})
    # under setting "all" the first and last layer are free
    qm = quantize_model(resnet20, x, w_bits={**free, "conv1": 3, "linear": 2}, setting="all", quantizer="nearest")
    assert qm.weight_bits()["conv1"] == 3 and qm.weight_bits()["linear"] == 2


def test_mixed_bits_survive_reconstruction_save_and_load(resnet20, calib64, tmp_path):
    names = [n for n, _ in quantize_model(resnet20, calib64[:4], quantizer="nearest").layers()]
    plan = {n: (2, 3, 4, 8)[i % 4] for i, n in enumerate(names) if n not in ("conv1", "linear")}
    qm = quantize_model(resnet20, calib64, w_bits=plan)
    reconstruct(qm, calib64, iters=3, batch_size=16, progress=False)
    for n, layer in qm.layers():
        assert int(layer.weight_quant.w_int.max()) <= 2 ** plan.get(n, 8) - 1
    qm.arch = "resnet20_cifar10"
    loaded = load_quantized(save_quantized(qm, tmp_path / "q.pt"))
    assert loaded.weight_bits() == qm.weight_bits() and loaded.config.w_bits == qm.config.w_bits
    with torch.no_grad():
        assert torch.equal(loaded(calib64[:8]), qm(calib64[:8]))


# --- sensitivity --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kl_table(resnet20, calib64):
    return measure_sensitivity(resnet20, calib64[:32], candidates=(2, 4, 8), method="kl", model_name="resnet20")


def test_kl_sensitivity_is_the_kl_of_the_model_with_one_layer_quantized(resnet20, calib64, kl_table):
    """Each score equals the KL computed directly: a model with only that layer's weights
    quantized (round to nearest, searched step), every other layer and activation FP, run whole
    (the measurement replays the units before the layer instead)."""
    x = calib64[:32]
    assert kl_table.layers[0] == "layer1.0.main.0" and "conv1" in kl_table.fixed and len(kl_table.layers) == 18
    qm = quantize_model(resnet20, x, w_bits=8, quantizer="nearest")
    with torch.no_grad(), qm.quantization_disabled():
        log_p = F.log_softmax(qm(x).double(), dim=1)
        for name in ("layer1.0.main.0", "layer2.1.main.4", "layer3.2.main.4"):
            layer = qm.net.get_submodule(name)
            for b in kl_table.bits:
                layer.weight_quant.setup(layer.weight, b)
                layer.weight_quant.enabled = True
                log_q = F.log_softmax(qm(x).double(), dim=1)
                layer.weight_quant.enabled = False
                direct = (log_p.exp() * (log_p - log_q)).sum(1).mean().item()
                # the two compute the logits in float32 in other layouts (channels-last, replayed
                # units): they differ by float rounding, delta ~ 1e-5 per logit; KL ~ d^2 / 2 in
                # the logit change d, so its error is about d * delta = sqrt(2 KL) * delta
                tolerance = 1e-4 * (2 * direct) ** 0.5 + 1e-9
                assert kl_table.score(name, b) == pytest.approx(direct, rel=0, abs=tolerance)
    for row in kl_table.scores:
        assert row[0] > row[-1] >= 0  # 2 bits move the output more than 8


def test_fisher_sensitivity_matches_its_formula_on_a_linear_model():
    """On a one-layer model the gradient at the layer's output is softmax - onehot(label):
    the score is 0.5 * mean_n sum_c (p - y)^2 (dW x)^2 with the labels the seed draws."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    x = torch.randn(40, 3, 2, 2)
    table = measure_sensitivity(model, x, candidates=(2, 3), method="fisher", setting="all", seed=5,
                                chunk_size=40)
    assert table.layers == ["1"] and table.fixed == {}
    qm = quantize_model(model, x, w_bits=8, quantizer="nearest", setting="all")
    layer = qm.net.get_submodule("1")
    with torch.no_grad():
        logits = model(x).double()
        p = logits.softmax(1)
        labels = torch.multinomial(p, 1, generator=torch.Generator().manual_seed(5)).squeeze(1)
        g = p - F.one_hot(labels, 5).double()
        for j, b in enumerate(table.bits):
            layer.weight_quant.setup(layer.weight, b)
            dz = x.flatten(1).double() @ (layer.weight_quant(layer.weight) - layer.weight).double().T
            expected = 0.5 * (g.square() * dz.square()).sum(1).mean().item()
            assert table.scores[0][j] == pytest.approx(expected, rel=1e-6)


def test_a_table_round_trips_and_refuses_another_model(kl_table, resnet20, tmp_path):
    path = kl_table.save(tmp_path / "t.json")
    loaded = SensitivityTable.load(path)
    assert loaded == kl_table
    loaded.check_model(resnet20)
    other = copy.deepcopy(resnet20)
    with torch.no_grad():
        other.conv1.weight[0, 0, 0, 0] += 1e-3
    with pytest.raises(GenieError, match="measured on another model"):
        loaded.check_model(other)
    (tmp_path / "bad.json").write_text(json.dumps({"layers": []}))
    with pytest.raises(GenieError, match="not a genie sensitivity table"):
        SensitivityTable.load(tmp_path / "bad.json")
    assert {"layer", "source", "params", "bits", "score"} <= set(kl_table.rows()[0])
    assert kl_table.matrix().shape == (18, 3)


@pytest.mark.parametrize("candidates,message", [
    ((1, 3), "from 2 to 8"), ((2, 9), "from 2 to 8"), ((), "is empty"), ("2,4", "list of bit widths"),
    ((2.5, 4), "from 2 to 8"), ((True, 4), "from 2 to 8"),
])
def test_bad_candidates_get_one_line(resnet20, calib64, candidates, message):
    with pytest.raises(GenieError, match=message):
        measure_sensitivity(resnet20, calib64[:4], candidates=candidates)
