"""GRPO, the stage after supervised fine-tuning: TRL's ``GRPOTrainer`` on this project's model, processor and
prompts (:mod:`.trainer`, :mod:`.data`, :mod:`.config`, ``rexomni grpo``), with grammar-constrained rollouts and
the geometry-aware rewards of :mod:`.rewards` (boxes matched one to one with F1 and IoU, absent phrases, points,
keypoints, format, behaviour penalties, negative prompts, confidence), composed by weight by ``build_rewards``."""
