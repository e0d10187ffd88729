-- The smallest layer, for tests: quick to compile, quick to check on the CPU.
layer {
	name = "tiny",
	heads = { q = 4, kv = 2 },
	head_dim = 64,
	index_dim = 64,
	block = 64,
	topk = 4,
	dtype = "bf16",
	arch = { "sm_90a", "sm_80" },
}
