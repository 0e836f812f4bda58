"""Speculative decoding: proposers of draft tokens and the exact rejection sampler that
verifies them. Not wired into the engine yet (issue: speculative decoding); each piece here is
complete and tested on its own."""
