/* hf_model.c - a Hugging Face folder (config.json + model.safetensors, or the shards named by
 * model.safetensors.index.json) as a model: canonical tensor names, data left in the mappings. */
#define _POSIX_C_SOURCE 200809L
#include "model.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hf_config.h"
#include "log.h"
#include "safetensors.h"

#define HF_SINGLE_FILE "model.safetensors"
#define HF_INDEX_FILE  "model.safetensors.index.json"

/* out = dir/name; fails on a path too long for out. */
static cinder_status hf_join(char *out, size_t size, const char *dir, const char *name,
                             cinder_error *err) {
    int n = snprintf(out, size, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= size)
        return cinder_error_set(err, CINDER_ERR_ARG, "%s/%s: path too long", dir, name);
    return CINDER_OK;
}

static bool hf_is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* config.name: the folder's own name, even when dir is "." or ends in '/'. */
static void hf_set_name(model_config *cfg, const char *dir) {
    char *real = realpath(dir, NULL);
    const char *p = real ? real : dir;
    size_t len = strlen(p);
    while (len > 1 && p[len - 1] == '/') len--;
    size_t start = len;
    while (start > 0 && p[start - 1] != '/') start--;
    snprintf(cfg->name, sizeof cfg->name, "%.*s", (int)(len - start), p + start);
    free(real);
}

/* Adds one tensor of a shard under its canonical name; skips names with none. */
static cinder_status hf_add_tensor(model *m, const st_file *f, const st_tensor *t,
                                   cinder_error *err) {
    const model_config *c = &m->config;
    model_tensor mt;
    memset(&mt, 0, sizeof mt);
    int layer, expert;
    if (!hf_tensor_name_map(t->name, mt.name, sizeof mt.name, &layer, &expert)) {
        LOG_DEBUG("%s: skipping tensor '%s' (not used by cinder)", f->what, t->name);
        return CINDER_OK;
    }
    if (layer >= c->n_layers)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: tensor '%s' is for layer %d but config.json has "
                                "num_hidden_layers = %d",
                                f->what, t->name, layer, c->n_layers);
    if (expert >= c->n_experts)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: tensor '%s' is for expert %d but config.json has %d experts",
                                f->what, t->name, expert, c->n_experts);
    if (model_tensor_find(m, mt.name))
        return cinder_error_set(err, CINDER_ERR_FORMAT, "%s: tensor '%s' (%s) appears twice",
                                f->what, t->name, mt.name);
    mt.type = t->type;
    mt.n_dims = t->n_dims;
    for (int i = 0; i < t->n_dims; i++) mt.shape[i] = t->shape[i];
    mt.data = t->data;
    mt.nbytes = (size_t)t->nbytes;
    return model_add_tensor(m, &mt, err);
}

/* Hands f's mapping to the model, so its tensors stay valid after st_close(f). */
static cinder_status hf_keep_mapping(model *m, st_file *f, cinder_error *err) {
    mapped_file mf;
    st_file_take_mapping(f, &mf);
    if (model_add_file(m, &mf) < 0) {
        mapped_file_close(&mf);
        return cinder_error_set(err, CINDER_ERR_NOMEM, "%s: out of memory", f->what);
    }
    return CINDER_OK;
}

static cinder_status hf_load_single(model *m, const char *path, cinder_error *err) {
    st_file *f = st_open(path, err);
    if (!f) return err ? err->status : CINDER_ERR_FORMAT;
    cinder_status st = hf_keep_mapping(m, f, err);
    for (int i = 0; i < f->n_tensors && st == CINDER_OK; i++)
        st = hf_add_tensor(m, f, &f->tensors[i], err);
    st_close(f);
    return st;
}

/* ---- sharded ---- */

typedef struct hf_shard {
    const char *name; /* into the index JSON */
    st_file *file;
} hf_shard;

/* A shard must be a plain file name inside the model folder. */
static bool hf_shard_name_ok(const char *name) {
    return name[0] && !strchr(name, '/') && !strchr(name, '\\') && !strstr(name, "..");
}

/* Parses the index file; *map_out is its weight_map (inside *root_out, which the caller frees).
 * A tensor listed twice is caught later, when its canonical name is added twice. */
static cinder_status hf_read_index(const char *path, cJSON **root_out, const cJSON **map_out,
                                   cinder_error *err) {
    mapped_file mf;
    cinder_status st = mapped_file_open(path, &mf, err);
    if (st != CINDER_OK) return st;
    char *text = malloc(mf.size + 1);
    if (!text) {
        mapped_file_close(&mf);
        return cinder_error_set(err, CINDER_ERR_NOMEM, "%s: out of memory", path);
    }
    if (mf.size) memcpy(text, mf.data, mf.size);
    text[mf.size] = '\0';
    cJSON *root = cJSON_ParseWithLength(text, mf.size);
    mapped_file_close(&mf);
    free(text);

    const cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!root)
        st = cinder_error_set(err, CINDER_ERR_FORMAT, "%s: not valid JSON", path);
    else if (!cJSON_IsObject(root))
        st = cinder_error_set(err, CINDER_ERR_FORMAT, "%s: not a JSON object", path);
    else if (!map)
        st = cinder_error_set(err, CINDER_ERR_FORMAT, "%s: missing 'weight_map'", path);
    else if (!cJSON_IsObject(map))
        st = cinder_error_set(err, CINDER_ERR_FORMAT, "%s: 'weight_map' must be an object", path);
    for (const cJSON *e = st == CINDER_OK ? map->child : NULL; e && st == CINDER_OK; e = e->next) {
        if (!cJSON_IsString(e))
            st = cinder_error_set(err, CINDER_ERR_FORMAT,
                                  "%s: weight_map: tensor '%s' must map to a file name string",
                                  path, e->string);
        else if (!hf_shard_name_ok(e->valuestring))
            st = cinder_error_set(err, CINDER_ERR_FORMAT,
                                  "%s: weight_map: tensor '%s': shard '%s' must be a plain file "
                                  "name inside the model folder",
                                  path, e->string, e->valuestring);
    }
    if (st != CINDER_OK) {
        cJSON_Delete(root);
        return st;
    }
    *root_out = root;
    *map_out = map;
    return CINDER_OK;
}

static cinder_status hf_load_sharded(model *m, const char *dir, const char *index_path,
                                     cinder_error *err) {
    cJSON *root = NULL;
    const cJSON *map = NULL;
    cinder_status st = hf_read_index(index_path, &root, &map, err);
    if (st != CINDER_OK) return st;

    int n_entries = cJSON_GetArraySize(map), n_shards = 0;
    hf_shard *shards = calloc((size_t)(n_entries ? n_entries : 1), sizeof *shards);
    if (!shards) {
        st = cinder_error_set(err, CINDER_ERR_NOMEM, "%s: out of memory", index_path);
        goto done;
    }
    /* Open each distinct shard once and hand its mapping to the model. */
    for (const cJSON *e = map->child; e && st == CINDER_OK; e = e->next) {
        int s = 0;
        while (s < n_shards && strcmp(shards[s].name, e->valuestring) != 0) s++;
        if (s < n_shards) continue;
        char path[PATH_MAX];
        st = hf_join(path, sizeof path, dir, e->valuestring, err);
        if (st != CINDER_OK) break;
        shards[n_shards].name = e->valuestring;
        shards[n_shards].file = st_open(path, err);
        if (!shards[n_shards].file) {
            st = err ? err->status : CINDER_ERR_FORMAT;
            cinder_error_prefix(err, "%s: shard '%s'", index_path, e->valuestring);
            break;
        }
        st = hf_keep_mapping(m, shards[n_shards++].file, err);
    }
    /* Then the tensors, as the index lists them. */
    for (const cJSON *e = map->child; e && st == CINDER_OK; e = e->next) {
        int s = 0;
        while (strcmp(shards[s].name, e->valuestring) != 0) s++;
        const st_tensor *t = st_tensor_find(shards[s].file, e->string);
        if (!t)
            st = cinder_error_set(err, CINDER_ERR_FORMAT,
                                  "%s: tensor '%s' is listed in shard '%s', which does not hold it",
                                  index_path, e->string, e->valuestring);
        else
            st = hf_add_tensor(m, shards[s].file, t, err);
    }
    if (st == CINDER_OK) {
        for (int s = 0; s < n_shards; s++)
            for (int i = 0; i < shards[s].file->n_tensors; i++)
                if (!cJSON_GetObjectItemCaseSensitive(map, shards[s].file->tensors[i].name))
                    LOG_WARN("%s: tensor '%s' is not in %s; ignored", shards[s].file->what,
                             shards[s].file->tensors[i].name, HF_INDEX_FILE);
        LOG_DEBUG("%s: %d tensors from %d shards", dir, n_entries, n_shards);
    }

done:
    for (int s = 0; s < n_shards; s++) st_close(shards[s].file);
    free(shards);
    cJSON_Delete(root);
    return st;
}

cinder_status hf_model_load(model *m, const char *dir, cinder_error *err) {
    char path[PATH_MAX];
    cinder_status st = hf_join(path, sizeof path, dir, "config.json", err);
    if (st == CINDER_OK) st = hf_config_load(path, &m->config, err);
    if (st != CINDER_OK) return st;
    m->format = MODEL_FORMAT_HF;
    hf_set_name(&m->config, dir);

    st = hf_join(path, sizeof path, dir, HF_SINGLE_FILE, err);
    if (st != CINDER_OK) return st;
    if (hf_is_file(path)) return hf_load_single(m, path, err);

    st = hf_join(path, sizeof path, dir, HF_INDEX_FILE, err);
    if (st != CINDER_OK) return st;
    if (hf_is_file(path)) return hf_load_sharded(m, dir, path, err);

    return cinder_error_set(err, CINDER_ERR_NOT_FOUND, "%s: neither %s nor %s found", dir,
                            HF_SINGLE_FILE, HF_INDEX_FILE);
}
