-- MiniMax-M3 with fp8 (e4m3) inputs for Hopper's fp8 tensor cores; the
-- output stays bf16.
layer {
	name = "minimax-m3-fp8",
	heads = { q = 64, kv = 4, index = 4 },
	head_dim = 128,
	index_dim = 128,
	block = 128,
	topk = 16,
	local_blocks = 1,
	sink_blocks = 0,
	dtype = { q = "fp8_e4m3", kv = "fp8_e4m3", index = "fp8_e4m3", out = "bf16" },
	causal = true,
	arch = "sm_90a",
}
