"""Data engines: public formats into one sample schema, task builders, synthetic scenes, generated
negatives (texts and images) and training mixtures. See docs/data.md.

    from rexomni.data_engines.readers import read_dataset, write_samples
    from rexomni.data_engines.tasks import build_example
    from rexomni.data_engines.synth import generate_scene
    from rexomni.data_engines.mixture import Mixture

Submodules are imported on use, so importing the package stays cheap.
"""
