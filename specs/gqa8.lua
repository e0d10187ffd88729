-- A generic GQA layer with 8 query heads per group, smaller blocks and a
-- larger top-k: the same 2048-token budget (32 * 64) cut finer.
layer {
	name = "gqa8",
	heads = { q = 32, kv = 4 },
	head_dim = 128,
	block = 64,
	topk = 32,
	dtype = "bf16",
}
