"""detlab: EfficientDet-style object detection in TensorFlow 2."""
import setuptools

setuptools.setup(
    name="detlab",
    version="0.1.0",
    description="TF2 object-detection pipeline: paper-faithful backbones, BiFPN, EfficientDet.",
    python_requires=">=3.10",
    # gin_configs/ lives at the repo root (the project's layout) and is installed as the
    # package `detlab.gin_configs`, so `--gin_file=efficientdet_d0.gin` resolves from any
    # working directory.
    packages=setuptools.find_packages(include=["detlab", "detlab.*", "data_tools", "data_tools.*"])
    + ["detlab.gin_configs"],
    package_dir={"detlab.gin_configs": "gin_configs"},
    package_data={"detlab.gin_configs": ["*.gin"]},
    install_requires=[
        "tensorflow~=2.20.0",
        "tf-keras~=2.20.0",
        "tf-models-official==2.20.0",
        "pycocotools",
        # The default COCO evaluator backend: pycocotools' numbers (tested) ~7x faster; a
        # numpy-only wheel, so a hard dependency keeps the default the same on every install.
        "faster-coco-eval>=1.6,<2",
        "tensorflow-datasets",
        "absl-py",
        "gin-config",
        "Pillow",
        "numpy",
    ],
    # test: tf-slim is a test-only oracle (its nets); ai-edge-litert, openvino, nncf, tf2onnx
    # and onnxruntime so the LiteRT, OpenVINO and ONNX export tests run rather than skip
    # (openvino: a 59 MB wheel).
    # scikit-learn: the real digits and photographs data_tools.make_digits_sets builds its
    # small real sets from (bundled in the wheel, no download).
    extras_require={"test": ["pytest", "pytest-xdist", "pytest-timeout", "tf-slim",
                             "ai-edge-litert", "openvino", "nncf", "tf2onnx>=1.17",
                             "onnxruntime>=1.31", "scikit-learn"],
                    "demo": ["scikit-learn"],
                    # LiteRT export (ai_edge_litert.interpreter; tf.lite.Interpreter is
                    # deprecated in TF 2.20)
                    "export": ["ai-edge-litert"],
                    # OpenVINO IR export and inference; nncf for the INT8 quantisation
                    "openvino": ["openvino", "nncf"],
                    # ONNX export (tf2onnx) and its inference + INT8 quantisation
                    # (onnxruntime); the versions checked with TF 2.20, numpy 2, protobuf 7
                    "onnx": ["tf2onnx>=1.17", "onnxruntime>=1.31"]},
)
