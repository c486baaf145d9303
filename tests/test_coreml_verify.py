"""Exported Core ML models compute what the PyTorch classifier computes (and we can tell
when they don't). Off macOS this exercises the NumPy reference interpreters."""

from __future__ import annotations

import ast
import copy
import shutil
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mlwidgets.classifier import ImageClassifier
from mlwidgets.coreml.verify import (
    UnsupportedOperation,
    VerificationError,
    VerificationReport,
    read_spec,
    verify,
)
from mlwidgets.models import build_model
from mlwidgets.parameters import ModelParameters

SIZE = 32
CLASSES = ("apple", "banana", "cherry", "date")
LOGIT_STD = 3.0  # top probabilities around 0.65, every class predicted for some images
FAST = ["small_cnn", "resnet18", "mobilenet_v3_small"]
ALL = FAST + [pytest.param("resnet34", marks=pytest.mark.slow)]
pytestmark = pytest.mark.filterwarnings("ignore")  # coremltools' version and tracer notices


def _make_images(root: Path, n: int = 56) -> list[Path]:
    """Noise, gradients and drawn shapes, of varied sizes and aspect ratios."""
    rng = np.random.default_rng(7)
    paths = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(24, 80, 2))
        if i % 4 == 0:
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        elif i % 4 == 1:
            yy, xx = np.mgrid[0:h, 0:w]
            c = rng.uniform(0, 1, 3)
            planes = [xx / w * c[0], yy / h * c[1], (xx + yy) / (w + h) * c[2]]
            pixels = (np.stack(planes, -1) * 255).astype(np.uint8)
        else:
            image = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
            draw = ImageDraw.Draw(image)
            for _ in range(3):
                (x0, x1), (y0, y1) = sorted(rng.integers(0, w, 2)), sorted(rng.integers(0, h, 2))
                shape = draw.ellipse if i % 4 == 2 else draw.rectangle
                shape([int(x0), int(y0), int(x1), int(y1)],
                      fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            pixels = np.asarray(image)
        path = root / f"image{i:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def _confident_classifier(architecture: str, images: list[Path]) -> ImageClassifier:
    """A random-init network whose predictions are confident and spread over the classes.

    Random weights give near-uniform probabilities, where top-1 comparisons mean little.
    So, like a trained network: batch-norm statistics measured on the images (so features
    vary), residual branches scaled down (as torchvision's zero_init_residual starts), and
    a head that reads the directions in which features vary most, scaled to confident
    logits. Without the last two, float16 rounding (relative to the features' size, mostly
    common to all images) swamps the differences between images: PyTorch's own half
    precision then differs from float32 by up to 0.1 in probability.
    """
    params = ModelParameters(architecture=architecture, image_size=SIZE, pretrained=False)
    model = build_model(params, len(CLASSES))
    classifier = ImageClassifier.from_model(model, CLASSES, SIZE)
    x = classifier.batch(images)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the one calibration batch
    with torch.no_grad():
        model.train()
        model(x)
        model.eval()
        for norm in norms:  # channels that hardly vary (dead after a ReLU) are not amplified
            norm.running_var.clamp_(min=float(norm.running_var.median()))
        for block in model.modules():
            if hasattr(block, "bn2"):  # a resnet BasicBlock's residual branch
                block.bn2.weight.mul_(0.3)
                block.bn2.bias.mul_(0.3)
        features = model.head[:-1](model.body(model.normalize(x)))
        directions = torch.linalg.svd(features - features.mean(0), full_matrices=False).Vh[:8]
        mixing = torch.randn(len(CLASSES), len(directions),
                             generator=torch.Generator().manual_seed(0))
        head = model.head[-1]
        head.weight.copy_(mixing @ directions)
        head.weight.mul_(LOGIT_STD / (features @ head.weight.T).std())
        head.bias.copy_(-(features @ head.weight.T).mean(0))
    return classifier


def _export(classifier: ImageClassifier, path: Path, precision: str = "float32",
            compress: str | None = None) -> Path:
    """The exporter's contract: traced softmax classifier, RGB image input, classLabel(Probs)."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    s = classifier.image_size
    net = torch.nn.Sequential(classifier.model, torch.nn.Softmax(dim=1)).eval()
    traced = torch.jit.trace(net, torch.rand(1, 3, s, s))
    program = path.suffix == ".mlpackage"
    options: dict[str, Any] = {"compute_precision": ct.precision.FLOAT16
                               if precision == "float16" else ct.precision.FLOAT32} \
        if program else {}
    model = ct.convert(
        traced, convert_to="mlprogram" if program else "neuralnetwork",
        inputs=[ct.ImageType(name="image", shape=(1, 3, s, s), scale=1 / 255.0, bias=[0, 0, 0],
                             color_layout=ct.colorlayout.RGB)],
        classifier_config=ct.ClassifierConfig(list(classifier.classes),
                                              predicted_feature_name="classLabel"),
        **options)
    spec = model.get_spec()
    probs = spec.description.predictedProbabilitiesName
    if probs != "classLabelProbs":
        ct.utils.rename_feature(spec, probs, "classLabelProbs")
        model = ct.models.MLModel(spec, weights_dir=model.weights_dir if program else None,
                                  skip_model_load=True)
    if compress == "int8":
        config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=0)
        model = cto.linear_quantize_weights(model, cto.OptimizationConfig(config))
    elif compress and compress.startswith("palettize-"):
        config = cto.OpPalettizerConfig(mode="kmeans", nbits=int(compress.split("-")[1]),
                                        weight_threshold=0)
        model = cto.palettize_weights(model, cto.OptimizationConfig(config))
    elif compress:  # neural network: "nn-N", N-bit linear weights ("nn-16": float16)
        from coremltools.models.neural_network import quantization_utils

        model = quantization_utils.quantize_weights(model, nbits=int(compress.split("-")[1]))
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return _make_images(tmp_path_factory.mktemp("verify-images"))


@pytest.fixture(scope="module")
def classifiers(images: list[Path]) -> dict[str, ImageClassifier]:
    class Built(dict):  # each architecture built on first use, then shared
        def __missing__(self, architecture: str) -> ImageClassifier:
            self[architecture] = _confident_classifier(architecture, images)
            return self[architecture]
    return Built()


@pytest.fixture(scope="module")
def exports(classifiers, tmp_path_factory) -> Any:
    """exports(architecture, suffix, precision, compress): each exported once (read-only)."""
    root, made = tmp_path_factory.mktemp("exports"), {}

    def get(architecture: str, suffix: str = ".mlpackage", precision: str = "float32",
            compress: str | None = None) -> Path:
        key = (architecture, suffix, precision, compress)
        if key not in made:
            name = "-".join(str(k) for k in key[:1] + key[2:]) + suffix
            made[key] = _export(classifiers[architecture], root / name, precision, compress)
        return made[key]
    return get


def _writable_copy(path: Path, tmp_path: Path) -> Path:
    target = tmp_path / path.name
    if path.is_dir():
        shutil.copytree(path, target)
    else:
        shutil.copy(path, target)
    return target


def _program_spec_file(package: Path) -> Path:
    return package / "Data" / "com.apple.CoreML" / "model.mlmodel"


def _main_block(spec: Any) -> Any:
    main = spec.mlProgram.functions["main"]
    return main.block_specializations[main.opset]


@pytest.mark.parametrize("architecture", ALL)
def test_float32_ml_program_agrees_with_pytorch(architecture, classifiers, images, exports):
    report = verify(exports(architecture), classifiers[architecture], images, batch_size=20)
    print(architecture, "float32", report, f"{report.seconds / report.n_images * 1e3:.1f} ms/image")
    assert report.n_images == len(images) >= 50
    assert report.backend == ("coreml" if sys.platform == "darwin" else "numpy-reference")
    assert report.top1_agreement == 1.0 and report.max_abs_diff <= 1e-4
    assert report.within(1e-4) and report.disagreements == ()


@pytest.mark.parametrize("architecture", ALL)
def test_float16_ml_program_is_within_1e_2(architecture, classifiers, images, exports):
    report = verify(exports(architecture, precision="float16"), classifiers[architecture],
                    images)
    print(architecture, "float16", report)
    assert report.max_abs_diff <= 1e-2
    assert report.top1_agreement >= 0.9


@pytest.mark.parametrize(("architecture", "compress"), [
    ("small_cnn", "int8"), ("small_cnn", "palettize-4"),
    ("small_cnn", "palettize-6"),  # 6-bit indices straddle bytes
    ("resnet18", "int8"), ("mobilenet_v3_small", "int8"), ("mobilenet_v3_small", "palettize-4"),
    pytest.param("resnet18", "palettize-4", marks=pytest.mark.slow),  # k-means: 8 s
    pytest.param("resnet34", "int8", marks=pytest.mark.slow),
    pytest.param("resnet34", "palettize-4", marks=pytest.mark.slow),  # k-means: 15 s
])
def test_compressed_ml_programs_report_honestly(architecture, compress, classifiers, images,
                                               exports):
    report = verify(exports(architecture, compress=compress), classifiers[architecture], images)
    print(architecture, compress, report)
    assert report.n_images == len(images)
    assert 0.0 <= report.top1_agreement <= 1.0 and 0.0 <= report.max_abs_diff <= 1.0
    assert len(report.disagreements) == round((1 - report.top1_agreement) * len(images))


@pytest.mark.parametrize("architecture", ["small_cnn", "resnet18", "mobilenet_v3_small",
                                          pytest.param("resnet34", marks=pytest.mark.slow)])
def test_float32_neural_network_agrees_with_pytorch(architecture, classifiers, images, exports):
    report = verify(exports(architecture, ".mlmodel"), classifiers[architecture], images)
    print(architecture, "mlmodel float32", report)
    assert report.top1_agreement == 1.0 and report.max_abs_diff <= 1e-4


@pytest.mark.parametrize("compress", ["nn-16", "nn-8", "nn-4"])
def test_quantized_neural_networks_report_honestly(compress, classifiers, images, exports):
    report = verify(exports("small_cnn", ".mlmodel", compress=compress), classifiers["small_cnn"],
                    images)
    print("small_cnn mlmodel", compress, report)
    assert 0.0 <= report.top1_agreement <= 1.0 and 0.0 <= report.max_abs_diff <= 1.0
    if compress == "nn-16":  # float16 weights, float32 arithmetic
        assert report.max_abs_diff <= 1e-2


def _compressed_variants(classifier: ImageClassifier, tmp_path: Path) -> dict[str, Any]:
    """Every decompression op form coremltools 9 writes, on iOS 16 and iOS 18 programs.

    Uniform palettes: the op forms are the same as k-means', without k-means' minutes.
    """
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    base = ct.models.MLModel(str(_export(classifier, tmp_path / "base.mlpackage")),
                             skip_model_load=True)
    s = classifier.image_size
    net = torch.nn.Sequential(classifier.model, torch.nn.Softmax(dim=1)).eval()
    ios18 = ct.convert(
        torch.jit.trace(net, torch.rand(1, 3, s, s)), convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS18, compute_precision=ct.precision.FLOAT16,
        inputs=[ct.ImageType(name="image", shape=(1, 3, s, s), scale=1 / 255.0)],
        classifier_config=ct.ClassifierConfig(list(classifier.classes)))
    linear, palette = cto.OpLinearQuantizerConfig, cto.OpPalettizerConfig
    configs = {
        "ios16-int8": (base, linear(mode="linear_symmetric", weight_threshold=0)),
        "ios16-palettize-4": (base, palette(mode="uniform", nbits=4, weight_threshold=0)),
        "ios18-int4-per-block": (ios18, linear(mode="linear", dtype="int4", weight_threshold=0,
                                               granularity="per_block", block_size=8)),
        "ios18-int8": (ios18, linear(mode="linear_symmetric", weight_threshold=0)),
        "ios18-palettize-3-grouped": (ios18, palette(mode="uniform", nbits=3, weight_threshold=0,
                                                     granularity="per_grouped_channel",
                                                     group_size=8)),
        "ios18-palettize-6": (ios18, palette(mode="uniform", nbits=6, weight_threshold=0)),
    }
    models = {}
    for name, (model, config) in configs.items():
        compress = cto.linear_quantize_weights if isinstance(config, linear) \
            else cto.palettize_weights
        models[name] = compress(model, cto.OptimizationConfig(config))
    return models


@pytest.mark.parametrize("architecture", [
    "small_cnn", pytest.param("mobilenet_v3_small", marks=pytest.mark.slow)])  # depthwise: 17 s
def test_decompression_matches_coremltools(architecture, classifiers, tmp_path):
    """Each constexpr_* form, decoded here, equals coremltools' own decompression."""
    import coremltools.optimize.coreml as cto

    from mlwidgets.coreml.verify import load_reference

    pixels = np.random.default_rng(0).integers(0, 256, (8, 3, SIZE, SIZE), dtype=np.uint8)
    for name, model in _compressed_variants(classifiers[architecture], tmp_path).items():
        model.save(str(tmp_path / f"{name}.mlpackage"))
        cto.decompress_weights(model).save(str(tmp_path / f"{name}-dense.mlpackage"))
        ops = {op.type for op in _main_block(model.get_spec()).operations}
        assert any(op.startswith("constexpr_") for op in ops), (name, ops)
        ours = load_reference(tmp_path / f"{name}.mlpackage").probabilities(pixels)
        dense = load_reference(tmp_path / f"{name}-dense.mlpackage").probabilities(pixels)
        assert np.abs(ours - dense).max() <= 1e-6, name


def _blob(package: Path, offset: int) -> tuple[int, int]:
    """(data offset, size in bytes) of the blob whose metadata is at `offset`."""
    data = (package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").read_bytes()
    sentinel, _, size, start = struct.unpack_from("<IIQQ", data, offset)
    assert sentinel == 0xDEADBEEF
    return start, size


def test_corrupted_weights_are_detected(classifiers, images, exports, tmp_path):
    """The check can fail: flip the sign of the head's weights inside weight.bin."""
    classifier = classifiers["small_cnn"]
    package = _writable_copy(exports("small_cnn"), tmp_path)
    spec, _ = read_spec(package)
    block = _main_block(spec)
    consts = {op.outputs[0].name: op for op in block.operations if op.type == "const"}
    linear = next(op for op in block.operations if op.type == "linear")
    weight = consts[linear.inputs["weight"].arguments[0].name].attributes["val"]
    start, size = _blob(package, weight.blobFileValue.offset)
    weight_file = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(weight_file.read_bytes())
    data[start:start + size] = (-np.frombuffer(data[start:start + size], np.float32)).tobytes()
    weight_file.write_bytes(bytes(data))
    report = verify(package, classifier, images)
    print("negated head", report)
    assert report.top1_agreement < 0.5 and report.max_abs_diff > 0.3
    assert not report.within(1e-2) and len(report.disagreements) > len(images) // 2


def test_changed_constant_in_the_program_is_detected(classifiers, images, exports, tmp_path):
    """An immediate const (the image scale, 1/255) changed in the spec is seen too."""
    package = _writable_copy(exports("small_cnn"), tmp_path)
    spec, _ = read_spec(package)
    scale = next(op for op in _main_block(spec).operations if op.type == "const"
                 and list(op.attributes["val"].immediateValue.tensor.floats.values)
                 == [pytest.approx(1 / 255)])
    scale.attributes["val"].immediateValue.tensor.floats.values[0] = 1 / 128
    _program_spec_file(package).write_bytes(spec.SerializeToString())
    report = verify(package, classifiers["small_cnn"], images)
    assert not report.within(1e-2), report


def test_changed_preprocessing_of_a_neural_network_is_detected(classifiers, images, exports,
                                                               tmp_path):
    model = _writable_copy(exports("small_cnn", ".mlmodel"), tmp_path)
    spec, _ = read_spec(model)
    spec.neuralNetworkClassifier.preprocessing[0].scaler.channelScale = 1 / 128
    model.write_bytes(spec.SerializeToString())
    assert not verify(model, classifiers["small_cnn"], images).within(1e-2)


def test_unknown_op_raises_unsupported_operation(classifiers, images, exports, tmp_path):
    package = _writable_copy(exports("small_cnn"), tmp_path)
    spec, _ = read_spec(package)
    relu = next(op for op in _main_block(spec).operations if op.type == "relu")
    relu.type = "made_up_op"
    _program_spec_file(package).write_bytes(spec.SerializeToString())
    with pytest.raises(UnsupportedOperation, match="made_up_op") as error:
        verify(package, classifiers["small_cnn"], images[:2])
    print(error.value)
    assert error.value.op_type == "made_up_op"
    assert relu.outputs[0].name in str(error.value)  # says where it is
    assert isinstance(error.value, VerificationError)


def test_unsupported_neural_network_layer_is_named(classifiers, images, exports, tmp_path):
    model = _writable_copy(exports("small_cnn", ".mlmodel"), tmp_path)
    spec, _ = read_spec(model)
    layer = next(la for la in spec.neuralNetworkClassifier.layers
                 if la.WhichOneof("layer") == "activation")
    layer.activation.PReLU.alpha.floatValue.append(0.1)
    model.write_bytes(spec.SerializeToString())
    with pytest.raises(UnsupportedOperation, match="PReLU") as error:
        verify(model, classifiers["small_cnn"], images[:2])
    print(error.value)
    assert layer.name in str(error.value)


def test_a_broken_weight_file_is_a_clear_error(classifiers, images, exports, tmp_path):
    package = _writable_copy(exports("small_cnn"), tmp_path)
    weight_file = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(weight_file.read_bytes())
    data[64:68] = b"\0\0\0\0"  # the first blob's metadata sentinel
    weight_file.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="sentinel"):
        verify(package, classifiers["small_cnn"], images[:2])


def test_misuse_is_refused_clearly(classifiers, images, exports, tmp_path):
    path, classifier = exports("small_cnn"), classifiers["small_cnn"]
    with pytest.raises(ValueError, match="backend"):
        verify(path, classifier, images, backend="tflite")
    with pytest.raises(ValueError, match="at least one image"):
        verify(path, classifier, [])
    with pytest.raises(FileNotFoundError):
        verify(tmp_path / "missing.mlpackage", classifier, images)
    other = ImageClassifier.from_model(classifier.model, ["a", "b", "c", "d"], SIZE)
    with pytest.raises(VerificationError, match="classes"):
        verify(path, other, images[:2])
    if sys.platform != "darwin":
        with pytest.raises(VerificationError, match="macOS"):
            verify(path, classifier, images[:2], backend="coreml")


def test_classes_are_matched_by_name_not_position(classifiers, images, exports):
    classifier = classifiers["small_cnn"]
    head = classifier.model.head[-1]
    reordered = copy.deepcopy(classifier.model)  # same network, outputs in another order
    order = [2, 0, 3, 1]
    with torch.no_grad():
        reordered.head[-1].weight.copy_(head.weight[order])
        reordered.head[-1].bias.copy_(head.bias[order])
    renamed = ImageClassifier.from_model(reordered, [CLASSES[i] for i in order], SIZE)
    assert verify(exports("small_cnn"), renamed, images).within(1e-4)


def test_summary_reads_like_create_ml():
    report = VerificationReport(Path("Fruit.mlpackage"), n_images=50, top1_agreement=1.0,
                                max_abs_diff=3.1e-7, mean_abs_diff=1e-8,
                                backend="numpy-reference")
    assert str(report) == report.summary() == (
        "50 images · top-1 agreement 100.0% · max |Δp| 3.1e-07 · numpy-reference")
    assert report.within(1e-4) and not report.within(1e-8)


def test_sub_byte_values_unpack_as_coremltools_packs_them():
    from coremltools.optimize._utils import pack_elements_into_bits

    from mlwidgets.coreml.mil_values import unpack_bits

    rng = np.random.default_rng(1)
    for bits in (1, 2, 3, 4, 6, 8):
        for signed in (False, True) if bits in (4, 8) else (False,):
            low, high = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
            values = rng.integers(low, high, 37).astype(np.int8 if signed else np.uint8)
            packed = pack_elements_into_bits(values, bits).tobytes()
            assert (unpack_bits(packed, bits, 37, signed) == values).all(), (bits, signed)


def test_reference_interpreters_import_only_numpy():
    """The reference never needs torch or coremltools: it reads protobuf messages handed in."""
    allowed = {"__future__", "collections", "typing", "pathlib", "struct", "math", "numpy"}
    folder = Path(__file__).resolve().parents[1] / "mlwidgets" / "coreml"
    for name in ("reference_ops", "mil_values", "mil_reference", "nn_reference"):
        tree = ast.parse((folder / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, (name, roots)
    verify_tree = ast.parse((folder / "verify.py").read_text())
    top_level = {alias.name.split(".")[0] for node in verify_tree.body
                 if isinstance(node, ast.Import) for alias in node.names}
    assert not top_level & {"torch", "coremltools"}
