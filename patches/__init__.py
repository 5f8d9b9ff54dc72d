"""Every change sglang-ssd makes to SGLang's behaviour, one module per patch.

Nothing here is imported for its side effects: the plugin (sglang_ssd.plugin) decides which
patches apply, and registers them through SGLang's HookRegistry.
"""
