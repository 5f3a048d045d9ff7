"""Build the demo models of the repository, byte for byte reproducibly.

    python -m models.build [--out models]

Writes `<out>/<model>/<version>/model.onnx`; the config.yaml files beside them are hand-written.
Every weight comes from a seeded numpy generator and nothing time- or host-dependent goes into
the protobuf, so a rebuild yields the same bytes (the tests check it).

The models take the 32 online features of a user (the views of models/feature_views.yaml, in
the order their config.yaml binds them) and answer a fraud probability. They standardise their
input first, with means and deviations fitted on the demo population the gateway seeds its
feature store with: raw features span counts below ten and amounts in the hundreds, and an MLP
fed those directly saturates its sigmoid. Standardised values are clipped to +-5, so a default
far outside the population (30 days since the last transaction) weighs like an outlier, not
like an order of magnitude.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from feature_store.synthetic import synthetic_rows
from feature_store.views import load_views
from service.monitor.profile import (
    REFERENCE_FILE,
    Profile,
    build_profile,
    column_values,
    model_columns,
    write_profile,
)
from service.repository.config import CONFIG_FILE, read_config

N_FEATURES = 32
OPSET = 17
# IR 8 is what opset 17 shipped with; every onnxruntime the project supports (>= 1.17) reads it.
IR_VERSION = 8
INPUT_NAME = "features"
OUTPUT_NAME = "probability"

VIEWS_FILE = Path(__file__).resolve().parent / "feature_views.yaml"
# The order of the `features.views` binding in the models' config.yaml.
FEATURE_VIEWS = ("txn_stats", "user_profile")
_POPULATION_ROWS = 20_000
# The models whose versions ship with a drift reference profile. heavy_mlp, a load for the
# batching benchmarks, has none: it is not monitored.
PROFILED = ("fraud_mlp",)
REPOSITORY = Path(__file__).resolve().parent
_CLIP = 5.0


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    hidden: tuple[int, ...]
    seed: int
    # Set for a retraining of a shared base model: the weights are the base's (from this seed)
    # plus drift drawn from `seed`.
    base_seed: int | None = None
    # Square hidden-to-hidden weights are computed in the graph from two vectors each (see
    # `_generated_weight`) and folded into constants when onnxruntime loads the model: distinct,
    # dense layers of any width from a file of kilobytes.
    generated_weights: bool = False


# Both fraud_mlp versions are the same base model plus seed-specific drift, like two retrainings
# on overlapping data: their scores differ clearly but stay correlated, which makes canary and
# shadow comparisons meaningful.
_FRAUD_BASE_SEED = 7
_RETRAIN_DRIFT = 0.25
# Fraud is rare: the output bias puts the typical score well below one half.
_OUTPUT_BIAS = -1.5
# Scales the last layer so the logit has a standard deviation near 1.5 on standardised input,
# wide enough to use the range of the sigmoid and narrow enough not to saturate it.
_LOGIT_STD = 1.5

MODELS = (
    ModelSpec("fraud_mlp", "1", hidden=(64,), seed=1, base_seed=_FRAUD_BASE_SEED),
    ModelSpec("fraud_mlp", "2", hidden=(64,), seed=2, base_seed=_FRAUD_BASE_SEED),
    # Eight distinct 2048x2048 layers (128 MB of FP32 weights once loaded): one row reads every
    # weight from memory, a batch reads each weight once for all its rows, so on a CPU a row
    # costs several times less in a batch of 64 than alone.
    ModelSpec("heavy_mlp", "1", hidden=(2048,) * 9, seed=3, generated_weights=True),
)


@dataclass(frozen=True)
class GeneratedWeight:
    """W[i, j] = scale * sin(u[i] * v[j]), computed by the graph in FP32.

    With phases spread over thousands of radians, neighbouring rows and columns are as good as
    uncorrelated, and the entries have a variance of scale**2 / 2.
    """

    u: np.ndarray
    v: np.ndarray
    scale: np.float32

    @classmethod
    def draw(cls, rng: np.random.Generator, fan_in: int, fan_out: int) -> GeneratedWeight:
        # He initialisation: a variance of 2 / fan_in.
        return cls(
            rng.uniform(-_PHASE_SPREAD, _PHASE_SPREAD, fan_in).astype(np.float32),
            rng.uniform(0.5, 1.5, fan_out).astype(np.float32),
            np.float32(np.sqrt(4.0 / fan_in)),
        )

    def materialise(self) -> np.ndarray:
        """The matrix the graph computes (up to the last bits of FP32 sin)."""
        phase: np.ndarray = self.u[:, None] * self.v[None, :]  # FP32, as the graph's Mul
        return np.sin(phase.astype(np.float64)) * float(self.scale)


# Phases stay below ~3e4 radians, where FP32 sin is still accurate to a few 1e-3.
_PHASE_SPREAD = 20_000.0

Weight = np.ndarray | GeneratedWeight


def _layer_weights(
    rng: np.random.Generator, sizes: list[int], generated: bool = False
) -> list[tuple[Weight, np.ndarray]]:
    """He-initialised (weight, bias) pairs, so ReLU activations keep a unit scale through depth;
    with `generated`, square layers are GeneratedWeight."""
    layers: list[tuple[Weight, np.ndarray]] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        weight: Weight
        if generated and fan_in == fan_out:
            weight = GeneratedWeight.draw(rng, fan_in, fan_out)
        else:
            weight = rng.normal(0.0, np.sqrt(2.0 / fan_in), (fan_in, fan_out))
        bias = rng.normal(0.0, 0.1, fan_out)
        layers.append((weight, bias))
    return layers


def _dense(weight: Weight) -> np.ndarray:
    return weight.materialise() if isinstance(weight, GeneratedWeight) else weight


def _weights(spec: ModelSpec) -> list[tuple[Weight, np.ndarray]]:
    sizes = [N_FEATURES, *spec.hidden, 1]
    layers = _layer_weights(np.random.default_rng(spec.seed), sizes, spec.generated_weights)
    if spec.base_seed is not None:
        if spec.generated_weights:
            raise ValueError(f"{spec.name} v{spec.version}: a retraining drifts stored weights")
        base = _layer_weights(np.random.default_rng(spec.base_seed), sizes)
        layers = [
            (_dense(w) + _RETRAIN_DRIFT * _dense(dw), b + _RETRAIN_DRIFT * db)
            for (w, b), (dw, db) in zip(base, layers, strict=True)
        ]
    last_w, _ = layers[-1]
    # He initialisation leaves the logit with a variance of roughly 2: rescale it to _LOGIT_STD.
    layers[-1] = (_dense(last_w) * (_LOGIT_STD / np.sqrt(2.0)), np.full(1, _OUTPUT_BIAS))
    return layers


@dataclass(frozen=True)
class Standardisation:
    mean: np.ndarray
    std: np.ndarray
    # A sample of the demo population as the models see it: standardised and clipped.
    population: np.ndarray
    # The whole demo population as the feature store serves it: the reference of the profiles.
    rows: np.ndarray

    @classmethod
    def fit(cls, views_file: Path) -> Standardisation:
        """Fitted on the synthetic rows `mlgate` seeds its feature store with for the demo."""
        views = load_views(views_file)
        population = np.concatenate(
            [synthetic_rows(views[name], _POPULATION_ROWS, seed=0)[1] for name in FEATURE_VIEWS],
            axis=1,
        ).astype(np.float64)
        if population.shape[1] != N_FEATURES:
            raise ValueError(
                f"{views_file}: views {', '.join(FEATURE_VIEWS)} give {population.shape[1]} "
                f"features, the models take {N_FEATURES}"
            )
        mean, std = population.mean(axis=0), population.std(axis=0)
        # A constant feature carries no signal; dividing by one keeps it finite.
        std = np.where(std > 0, std, 1.0)
        sample = np.clip((population[:2000] - mean) / std, -_CLIP, _CLIP)
        return cls(mean, std, sample, population.astype(np.float32))


def _fit_output(
    layers: list[tuple[Weight, np.ndarray]], standardisation: Standardisation
) -> tuple[np.ndarray, np.ndarray]:
    """The last layer rescaled so the logit has _LOGIT_STD and mean _OUTPUT_BIAS on the demo
    population, for deep models whose activations drift from the scale He initialisation
    foresees. Scale and shift are rounded to 3 significant digits, so that the last bits of a
    machine's BLAS and sin cannot change the bytes of the model."""
    x = standardisation.population
    for weight, bias in layers[:-1]:
        x = np.maximum(x @ _dense(weight) + bias, 0.0)
    last_w, _ = layers[-1]
    logit = x @ _dense(last_w)
    scale = float(f"{_LOGIT_STD / float(logit.std()):.3g}")
    shift = float(f"{_OUTPUT_BIAS - float(logit.mean()) * scale:.3g}")
    return _dense(last_w) * scale, np.full(1, shift)


def build_model(spec: ModelSpec, standardisation: Standardisation) -> onnx.ModelProto:
    """The ONNX graph of one model version: standardise and clip, MLP with ReLU, sigmoid."""
    initializers: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def weight(name: str, value: Weight) -> str:
        if not isinstance(value, GeneratedWeight):
            return constant(name, value)
        u = constant(f"{name}_u", value.u[:, None])
        v = constant(f"{name}_v", value.v[None, :])
        scale = constant(f"{name}_scale", np.asarray(value.scale))
        nodes.append(helper.make_node("Mul", [u, v], [f"{name}_phase"]))
        nodes.append(helper.make_node("Sin", [f"{name}_phase"], [f"{name}_wave"]))
        nodes.append(helper.make_node("Mul", [f"{name}_wave", scale], [name]))
        return name

    scale = constant("std_scale", 1.0 / standardisation.std)
    shift = constant("std_shift", -standardisation.mean / standardisation.std)
    nodes.append(helper.make_node("Mul", [INPUT_NAME, scale], ["scaled"]))
    nodes.append(helper.make_node("Add", ["scaled", shift], ["shifted"]))
    # Clip takes its bounds as inputs since opset 11.
    clip_min = constant("clip_min", np.asarray(-_CLIP))
    clip_max = constant("clip_max", np.asarray(_CLIP))
    nodes.append(helper.make_node("Clip", ["shifted", clip_min, clip_max], ["standardised"]))

    layers = _weights(spec)
    if spec.generated_weights:
        layers[-1] = _fit_output(layers, standardisation)
    x = "standardised"
    for i, (w, b) in enumerate(layers):
        nodes.append(helper.make_node("MatMul", [x, weight(f"w{i}", w)], [f"matmul{i}"]))
        nodes.append(helper.make_node("Add", [f"matmul{i}", constant(f"b{i}", b)], [f"linear{i}"]))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [f"linear{i}"], [f"relu{i}"]))
            x = f"relu{i}"
    nodes.append(helper.make_node("Sigmoid", [f"linear{len(layers) - 1}"], [OUTPUT_NAME]))

    graph = helper.make_graph(
        nodes,
        f"{spec.name}_v{spec.version}",
        inputs=[
            helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", N_FEATURES])
        ],
        outputs=[helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 1])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="mlgate.models.build",
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def build_reference(
    spec: ModelSpec, model: onnx.ModelProto, standardisation: Standardisation, views_file: Path
) -> Profile:
    """The version's drift reference: the demo population and the version's answers to it."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = standardisation.rows
    tensors = {INPUT_NAME: rows, OUTPUT_NAME: session.run([OUTPUT_NAME], {INPUT_NAME: rows})[0]}
    config = read_config(REPOSITORY / spec.name / CONFIG_FILE)
    columns = model_columns(config, load_views(views_file))
    return build_profile(spec.name, spec.version, columns, column_values(columns, tensors))


def build_all(out: Path, views_file: Path = VIEWS_FILE) -> list[Path]:
    """Write every model version under `out`, and the reference profiles of those PROFILED;
    returns the paths written."""
    standardisation = Standardisation.fit(views_file)
    paths = []
    for spec in MODELS:
        path = out / spec.name / spec.version / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        model = build_model(spec, standardisation)
        path.write_bytes(model.SerializeToString())
        paths.append(path)
        if spec.name in PROFILED:
            reference = path.parent / REFERENCE_FILE
            write_profile(build_reference(spec, model, standardisation, views_file), reference)
            paths.append(reference)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m models.build", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="model repository to write into (default: the directory of this script)",
    )
    parser.add_argument(
        "--views",
        type=Path,
        default=VIEWS_FILE,
        help="feature views whose demo population fits the standardisation (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    for path in build_all(args.out, args.views):
        data = path.read_bytes()
        print(f"{path}  {len(data) / 1e6:6.2f} MB  sha256 {hashlib.sha256(data).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
