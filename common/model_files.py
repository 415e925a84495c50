"""Which model file a run uses, and what its network is called: one place for both.

predict.py's --model is a network's name (constants.NETWORKS) or a .keras
file.  Without it, a model that train.py wrote into --output-dir is preferred
(its name says its network: constants.TRAINED_IN_PLANE), else the shipped
model of the job's default network: constants.DEFAULT_NETWORK for the user's
scans, constants.SEED_NETWORK for the seed's evaluation of the test split.
Through-plane, the network of each factor is chosen here too
(through_plane_network) and loaded by through_plane.model_source.ModelSource (a
trained through-plane model is given with --model).
"""
import os

import constants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project, above common/


def shipped_name(network, factor=None):
    """The shipped model of `network`, relative to the project: in-plane x4, or through-plane x`factor`."""
    if factor is None:
        return constants.PRETRAINED_IN_PLANE[network]
    return constants.PRETRAINED_THROUGH_PLANE[network].format(factor=factor)


def shipped_path(network, factor=None):
    """shipped_name's file (it may not exist: the quality network ships only some factors)."""
    return os.path.join(ROOT, shipped_name(network, factor))


def trained_name(network, factor=None):
    """The file train.py writes into --output-dir: <network>.keras, or <network>_through_x<F>.keras."""
    if factor is None:
        return constants.TRAINED_IN_PLANE.format(network=network)
    return constants.TRAINED_THROUGH_PLANE.format(network=network, factor=factor)


def label(network):
    """The network in words, as outputs name it: "ESPCN" or "Quality network"."""
    return constants.NETWORK_LABELS[network]


def networks_from(default):
    """Every network, `default` first: the order in which trained models in --output-dir are preferred."""
    return (default,) + tuple(network for network in constants.NETWORKS if network != default)


def in_plane_model(model_arg, output_dir, default=constants.DEFAULT_NETWORK):
    """(the in-plane model file to load, a word on where it came from).

    --model espcn or quality names a shipped network; a path is taken as it
    is; without --model, a model trained into `output_dir` (the `default`
    network's first), else the shipped model of `default`.  ValueError when a
    shipped file is missing.
    """
    if model_arg in constants.NETWORKS:
        return existing_shipped(model_arg), f"the shipped {label(model_arg)}, --model {model_arg}"
    if model_arg:
        return model_arg, "given by --model"
    for network in networks_from(default):
        trained = os.path.join(output_dir, trained_name(network))
        if os.path.exists(trained):
            return trained, f"trained into {output_dir}, preferred to the shipped models"
    return existing_shipped(default), f"the shipped {label(default)}, the default"


def through_plane_network(model_arg, factor):
    """The shipped network that refines through-plane x`factor` for --model `model_arg` (a network's name or
    None; a file's network is read from the file): the one named, else the default network, else, where the
    default does not ship this factor (the quality network ships constants.QUALITY_THROUGH_PLANE_FACTORS),
    the ESPCN, which ships every factor of constants.THROUGH_PLANE_FACTORS."""
    if model_arg is not None or os.path.isfile(shipped_path(constants.DEFAULT_NETWORK, factor)):
        return model_arg or constants.DEFAULT_NETWORK
    return "espcn"


def existing_shipped(network, factor=None):
    """shipped_path, or ValueError naming the missing file."""
    path = shipped_path(network, factor)
    if not os.path.isfile(path):
        raise ValueError(f"the shipped {label(network)} ({shipped_name(network, factor)}) is missing")
    return path
