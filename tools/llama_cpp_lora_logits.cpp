// The logits llama.cpp computes for one text under several models, each a GGUF alone or a GGUF
// with LoRA GGUFs applied at run time (llama_adapter_lora_init + llama_set_adapters_lora, at
// scale 1 unless given: what `llama-cli --lora` and `--lora-scaled` do), compared with the first
// run's.
// Built and run by tools/check_llama_cpp_lora.sh against the libllama it builds; qlora's own code.
//
//   usage: llama_cpp_lora_logits TEXT_FILE N_TOKENS RUN...      RUN = MODEL.gguf[+LORA.gguf[@SCALE]]...
//
// The text's first N_TOKENS tokens (the first run's tokenizer, BOS as the model says) go through
// each run in one batch, logits kept at every position, KV cache in F32 (the default F16 cache
// alone moves the logits by ≈ 1e-3) and flash attention off. Per run it prints the perplexity
// of the tokens and, from the second run on, max |Δlogit| against the first run, divided by the
// first run's max |logit|, and how often the argmax agrees. Last line, machine-readable:
//   RESULT <run index> <max |Δlogit| / max |logit|> <perplexity>   (one per run)
#include "llama.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static void quiet_log(enum ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

struct Run {
    std::string model;
    std::vector<std::string> loras;
    std::vector<float> scales;
    std::vector<float> logits;  // [T, V]
    double ppl = 0;
};

// Evaluates `tokens` (tokenized here when empty) under `run`; false with a message on failure.
static bool evaluate(Run & run, const std::string & text, int n_tokens, std::vector<llama_token> & tokens, int & n_vocab) {
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(run.model.c_str(), mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", run.model.c_str()); return false; }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    if (tokens.empty()) {
        std::vector<llama_token> all(text.size() + 8);
        int n = llama_tokenize(vocab, text.c_str(), (int) text.size(), all.data(), (int) all.size(), true, false);
        if (n < 2) { fprintf(stderr, "the text gives %d tokens\n", n); return false; }
        all.resize(n < n_tokens ? n : n_tokens);
        tokens = all;
    }
    n_vocab = llama_vocab_n_tokens(vocab);
    const int T = (int) tokens.size();

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = cp.n_batch = cp.n_ubatch = (uint32_t) T;
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.n_threads = cp.n_threads_batch = 2;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "cannot create a context for %s\n", run.model.c_str()); return false; }
    std::vector<llama_adapter_lora *> adapters;
    for (const auto & path : run.loras) {
        adapters.push_back(llama_adapter_lora_init(model, path.c_str()));
        if (!adapters.back()) { fprintf(stderr, "llama.cpp refuses the LoRA %s\n", path.c_str()); return false; }
    }
    if (!adapters.empty() && llama_set_adapters_lora(ctx, adapters.data(), adapters.size(), run.scales.data()) != 0) {
        fprintf(stderr, "cannot set the LoRAs\n");
        return false;
    }

    llama_batch batch = llama_batch_init(T, 0, 1);
    for (int t = 0; t < T; t++) {
        batch.token[t] = tokens[t];
        batch.pos[t] = t;
        batch.n_seq_id[t] = 1;
        batch.seq_id[t][0] = 0;
        batch.logits[t] = 1;
    }
    batch.n_tokens = T;
    if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "llama_decode failed\n"); return false; }
    run.logits.resize((size_t) T * n_vocab);
    double nll = 0;
    for (int t = 0; t < T; t++) {
        const float * row = llama_get_logits_ith(ctx, t);
        std::copy(row, row + n_vocab, run.logits.begin() + (size_t) t * n_vocab);
        if (t + 1 < T) {
            double m = row[0];
            for (int v = 1; v < n_vocab; v++) m = row[v] > m ? row[v] : m;
            double sum = 0;
            for (int v = 0; v < n_vocab; v++) sum += std::exp(row[v] - m);
            nll += m + std::log(sum) - row[tokens[t + 1]];
        }
    }
    run.ppl = std::exp(nll / (T - 1));
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);  // frees the adapters too
    return true;
}

int main(int argc, char ** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s TEXT_FILE N_TOKENS MODEL.gguf[+LORA.gguf[@SCALE]]...\n", argv[0]);
        return 2;
    }
    std::ifstream in(argv[1]);
    if (!in) { fprintf(stderr, "cannot read %s\n", argv[1]); return 2; }
    std::stringstream text;
    text << in.rdbuf();
    const int n_tokens = atoi(argv[2]);

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    std::vector<Run> runs;
    for (int i = 3; i < argc; i++) {
        std::string arg = argv[i];
        Run run;
        size_t plus = arg.find('+');
        run.model = arg.substr(0, plus);
        while (plus != std::string::npos) {
            size_t next = arg.find('+', plus + 1);
            std::string lora = arg.substr(plus + 1, next == std::string::npos ? std::string::npos : next - plus - 1);
            size_t at = lora.rfind('@');
            run.scales.push_back(at == std::string::npos ? 1.0f : strtof(lora.c_str() + at + 1, nullptr));
            run.loras.push_back(lora.substr(0, at));
            plus = next;
        }
        runs.push_back(run);
    }
    std::vector<llama_token> tokens;
    int n_vocab = 0;
    std::vector<std::string> results;
    for (size_t i = 0; i < runs.size(); i++) {
        Run & r = runs[i];
        if (!evaluate(r, text.str(), n_tokens, tokens, n_vocab)) return 1;
        std::string name = r.model;
        for (size_t j = 0; j < r.loras.size(); j++) name += " + LoRA " + r.loras[j] + (r.scales[j] == 1 ? "" : " @" + std::to_string(r.scales[j]));
        if (i == 0) {
            printf("%zu tokens, vocab %d\n[0] %s: perplexity %.6f (reference)\n", tokens.size(), n_vocab, name.c_str(), r.ppl);
            results.push_back("0 0 " + std::to_string(r.ppl));
            continue;
        }
        const Run & ref = runs[0];
        double max_ref = 0, max_diff = 0;
        int same = 0;
        for (size_t t = 0; t < tokens.size(); t++) {
            const float * a = &ref.logits[t * n_vocab], * b = &r.logits[t * n_vocab];
            int arg_a = 0, arg_b = 0;
            for (int v = 0; v < n_vocab; v++) {
                max_ref = std::fmax(max_ref, std::fabs(a[v]));
                max_diff = std::fmax(max_diff, std::fabs((double) a[v] - b[v]));
                if (a[v] > a[arg_a]) arg_a = v;
                if (b[v] > b[arg_b]) arg_b = v;
            }
            same += arg_a == arg_b;
        }
        printf("[%zu] %s: perplexity %.6f, max |Δlogit| %.3e = %.3e of max |logit| %.2f, argmax agrees at %d/%zu positions\n",
               i, name.c_str(), r.ppl, max_diff, max_diff / max_ref, max_ref, same, tokens.size());
        char line[128];
        snprintf(line, sizeof line, "%zu %.6e %.6f", i, max_diff / max_ref, r.ppl);
        results.push_back(line);
    }
    for (const auto & r : results) printf("RESULT %s\n", r.c_str());
    llama_backend_free();
    return 0;
}
