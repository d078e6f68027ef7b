//! `qmoe`: command-line front end. Clap wiring only; the work lives in the
//! library crates. Errors print as one line plus context, exit code 1.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "qmoe", version, about = "Inference engine for the Qwen3.5 / Qwen3.6 / Qwen3-Next hybrid family")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streamed to stdout; timings on stderr.
    Run(cmd::run::Args),
    /// Interactive multi-turn chat through the model's chat template.
    Chat(cmd::chat::Args),
    /// Write the logits of every position of a token sequence as .npy (verification interface).
    Logits(cmd::logits::Args),
    /// Show what a checkpoint is: dialect, config, conventions applied, every tensor.
    Inspect(cmd::inspect::Args),
    /// Convert a checkpoint to GGUF (f32, f16, bf16, q8_0, q4_k_m, q6_k).
    Convert(cmd::convert::Args),
    /// Measure prefill/decode speed, weight bytes per token and memory bandwidth.
    Bench(cmd::bench::Args),
    /// Write a random-weight checkpoint with Qwen3.6-35B-A3B shapes (bf16, MLX 4-bit, GGUF).
    Synth(cmd::synth::Args),
}

fn main() {
    // A bug must still end as one readable line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error (please report): {info}");
    }));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cmd::run::main(a),
        Command::Chat(a) => cmd::chat::main(a),
        Command::Logits(a) => cmd::logits::main(a),
        Command::Inspect(a) => cmd::inspect::main(a),
        Command::Convert(a) => cmd::convert::main(a),
        Command::Bench(a) => cmd::bench::main(a),
        Command::Synth(a) => cmd::synth::main(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
