/* hf_config.c - being written */
