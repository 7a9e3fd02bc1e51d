"""Demonstration models ValueBias builds itself, offline: tiny transformers trained in seconds, with a planted
preference (``reward_models``, ``language_models``), the shared builders (``tiny_models``: tokenizer, tiny
Llama/Gemma models, chat templates) and tiny random-weight replicas of the paper's reward-model heads
(``paper_heads``). None of them is a real model; the science in ``valuebias`` works on any model."""
