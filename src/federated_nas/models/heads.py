"""Which part of a network is its head (the final classifier) and which its body (everything else).

Personalization methods share the body and treat the head differently (FedRep keeps it per
client, FedBABU freezes it). Every network here ends in an ``nn.Linear`` classifier, so the head
is found structurally, the same way for torchvision models, the small CNN and searched networks.
"""

from __future__ import annotations

from torch import nn

from federated_nas.errors import ConfigError


def head_module_name(model: nn.Module) -> str:
    """The name of the last ``nn.Linear`` in ``named_modules()`` order: the layer producing the logits."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear classifier to use as the personal head")
    return linears[-1]


def with_head(model: nn.Module) -> nn.Module:
    """``model``, once it is known to have a head: methods check when the model is built, before a run starts."""
    head_module_name(model)
    return model


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(model.get_submodule(head_module_name(model)).parameters())


def body_parameters(model: nn.Module) -> list[nn.Parameter]:
    head = {id(p) for p in head_parameters(model)}
    return [p for p in model.parameters() if id(p) not in head]


def head_parameter_names(model: nn.Module) -> list[str]:
    """The head's entries of ``model.state_dict()`` (e.g. ``fc.weight``, ``fc.bias``)."""
    head = head_module_name(model)
    return [f"{head}.{name}" for name, _ in model.get_submodule(head).named_parameters()]
