-- MiniMax-M3 with fp8 (e4m3) index keys and queries: the index branch reads
-- half the bytes (it dominates decode traffic); attention stays bf16.
layer {
	name = "minimax-m3-fp8index",
	heads = { q = 64, kv = 4, index = 4 },
	head_dim = 128,
	index_dim = 128,
	block = 128,
	topk = 16,
	local_blocks = 1,
	sink_blocks = 0,
	dtype = { q = "bf16", kv = "bf16", index = "fp8_e4m3", out = "bf16" },
	causal = true,
	arch = "sm_90a",
}
