/* hf_model.c - being written */
