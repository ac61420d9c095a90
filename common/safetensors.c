/* safetensors.c - being written */
