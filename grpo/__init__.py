"""GRPO, the stage after supervised fine-tuning: :mod:`.rewards` holds the geometry-aware rewards in TRL's reward
form (boxes matched one to one with F1 and IoU, absent phrases, points, keypoints, format, behaviour penalties,
negative prompts, confidence) and ``build_rewards``, which composes them by weight for ``GRPOTrainer``."""
