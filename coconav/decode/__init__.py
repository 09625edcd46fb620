"""Decoding: running the latent LM on questions. Thought control (the navigator's halting and steering),
K trajectories per question that share a memory, fusion of their answers, traces of every thought, and
the one answer-generation path shared by evaluation and inference."""
