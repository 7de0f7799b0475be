use clap::Parser;

fn main() {
    let cli = t2v_turbo::cli::Cli::parse();
    if let Err(e) = t2v_turbo::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
