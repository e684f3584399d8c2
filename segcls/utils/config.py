"""Config helpers used by modules (kept apart from segcls.config, which imports the modules)."""
def get_config_node(cfg, dotted_key):
    """The node at ``dotted_key`` (e.g. ``"MODEL.AUX_HEAD"``): lets one module class be configured
    from several places, such as a head used as the main and as the auxiliary head."""
    node = cfg
    for key in dotted_key.split("."):
        node = node[key]
    return node
