"""The starting model of through-plane super-resolution for each factor: a --model file, or a shipped one.

The shipped files are named by common/model_files.py; here they are loaded (safe mode), checked to be
through-plane models of the factor asked for, served in the run's precision and cached, one per factor.
"""
import os

import constants
import inference
import modules
from common import model_files


def load_model_1d(path, factor=None, precision="float32"):
    """A through-plane ESPCN from a .keras file (safe mode), served in `precision`; ValueError naming the file."""
    model = inference.read_model_file(path)
    found = modules.through_plane_factor(model)
    if found is None:
        raise ValueError(f"--model {path}: not a through-plane model (no DepthToSpace1D layer); "
                         "train one with train.py --through-plane-factor F")
    if factor is not None and found != factor:
        raise wrong_factor(path, found, factor)
    return modules.inference_model(model, precision)


def wrong_factor(path, found, factor):
    """The error for a --model file of factor `found` asked to refine by `factor`."""
    return ValueError(f"--model {path} refines x{found}, not the x{factor} asked for")


class ModelSource:
    """The starting model for a factor: a --model file if given, else the shipped one of the network named.

    `model` is predict.py's --model: "espcn" (the shipped ESPCNs, every factor
    of constants.THROUGH_PLANE_FACTORS), "quality" (the shipped quality
    networks: a factor without one is refused), None (the default network,
    constants.DEFAULT_NETWORK: a factor it does not ship is served by the
    ESPCN's, with a note), or a .keras file of one factor (factors(): volumes
    are refined at it).  Models are served in `precision` (predict.py's
    --precision; auto is bfloat16 on AMX or AMD's AVX-512 BF16).  On the
    template's --compare without adaptation (2-core AMD EPYC with AVX-512
    BF16): x4 34.7926 dB in bfloat16 against 34.7954 in float32, x3 36.7712
    against 36.7684, in 4.4 / 5.4 s against 8.0 / 9.2 s.
    """

    def __init__(self, model=None, precision=constants.PREDICT_PRECISION):
        named = model is None or model in constants.NETWORKS
        self.network = (model or constants.DEFAULT_NETWORK) if named else None
        self.chosen = model is not None  # --model named it: no other network stands in for a missing factor
        self.model_path, self.precision = (None if named else model), precision
        self.cache = {}

    def describe(self):
        """The source in words for the console and a BIDS dataset_description, e.g. "Quality network through-plane
        (shipped, the default)"."""
        if self.model_path:
            return f"{model_files.label(self.network_for(self.model_file_factor()))} through-plane, --model " \
                   f"{self.model_path}"
        why = f"--model {self.network}" if self.chosen else "the default"
        return f"{model_files.label(self.network)} through-plane (shipped, {why})"

    def network_for(self, factor):
        """The network that refines `factor` ("espcn" or "quality"), read from a --model file."""
        if self.model_path:
            return modules.network_of(self.cache[self.model_file_factor()][0])
        return model_files.through_plane_network(self.network if self.chosen else None, factor)

    def path_for(self, factor):
        """The model file for `factor`: the --model file, or the shipped one (which may not exist)."""
        return self.model_path or model_files.shipped_path(self.network_for(factor), factor)

    def factors(self):
        """The factors this source refines, when not all: the quality network's shipped ones, or a --model
        file's own (read from the file, which stays cached); None for the ESPCN, which covers every factor.
        """
        if self.model_path:
            return (self.model_file_factor(),)
        return constants.QUALITY_THROUGH_PLANE_FACTORS if self.network == "quality" else None

    def model_file_factor(self):
        """The --model file's factor, its model loaded once into the cache."""
        if not self.cache:
            model = load_model_1d(self.model_path, None, self.precision)
            self.cache[modules.through_plane_factor(model)] = (model, f"--model {self.model_path}")
        return next(iter(self.cache))

    def starting_model(self, factor):
        """(model or None when no shipped ESPCN covers `factor`, a word on where it came from)."""
        if factor not in self.cache:
            path = self.path_for(factor)
            network = self.network_for(factor)
            if self.model_path:
                found = self.model_file_factor()
                if found != factor:
                    raise wrong_factor(path, found, factor)
            elif os.path.isfile(path):
                stand_in = "" if network == self.network else \
                    f" (no {model_files.label(self.network)} is shipped for x{factor}: the ESPCN's stands in)"
                self.cache[factor] = (load_model_1d(path, factor, self.precision),
                                      f"pretrained {model_files.shipped_name(network, factor)}{stand_in}")
            elif network == "quality":
                raise ValueError(f"--model quality: no quality network is shipped for x{factor} through-plane "
                                 f"({model_files.shipped_name('quality', factor)}); use --model espcn or a "
                                 f"model trained with train.py --network quality --through-plane-factor {factor}")
            else:
                self.cache[factor] = (None, "no pretrained model for this factor")
        return self.cache[factor]
