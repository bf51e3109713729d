"""Model zoo: ``load_model(name)``, ``model_spec(name)``, ``list_models()``."""
from .cifar_resnet import CifarBasicBlock, CifarResNet, ZeroPadShortcut
from .zoo import ModelSpec, list_models, load_model, model_spec

__all__ = [
    "CifarBasicBlock",
    "CifarResNet",
    "ZeroPadShortcut",
    "ModelSpec",
    "list_models",
    "load_model",
    "model_spec",
]
