"""Model providers beyond the test doubles: the local llama.cpp provider and its catalog."""
