//! `streamforge replay <projector>|--all` (issue 18): shadow rebuilds from
//! the command line, with a progress bar per projector. The live read
//! models keep serving and consuming meanwhile (see
//! `projections::runtime::ReplayGuard` and docs/history.md).

use anyhow::{anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use projections::runtime::{ReplayGuard, ReplayOptions};

use crate::app::App;

/// Rebuilds projector `name`, or every projector one after the other with
/// `all`, printing a progress bar (to stderr) and a line per projector.
///
/// # Errors
/// Neither or both of `name` and `all`; an unknown name (the known ones are
/// listed); a rebuild of the projector running elsewhere; the replay's own
/// failure (the live read model is then untouched).
pub async fn replay_command(app: &App, name: Option<&str>, all: bool) -> anyhow::Result<()> {
    let runner = app.replay_runner();
    let names: Vec<&'static str> = match (name, all) {
        (Some(name), false) => {
            let projector = runner.projector(name).ok_or_else(|| {
                anyhow!("no projector named `{name}`; known: {}", runner.names().join(", "))
            })?;
            vec![projector.name()]
        }
        (None, true) => runner.names(),
        _ => bail!("give one projector name or --all (known: {})", runner.names().join(", ")),
    };
    let style =
        ProgressStyle::with_template("{prefix:>14} [{bar:40}] {pos}/{len} events, {msg} ({elapsed})")?
            .progress_chars("=> ");
    for name in names {
        let guard = ReplayGuard::acquire(&app.pool, name)
            .await?
            .ok_or_else(|| anyhow!("a rebuild of `{name}` is running already"))?;
        let bar = ProgressBar::new(0).with_style(style.clone()).with_prefix(name);
        let stats = runner
            .replay(&guard, ReplayOptions::default(), &|p| {
                bar.set_length(p.total.max(p.done));
                bar.set_position(p.done);
                bar.set_message(p.phase);
            })
            .await?;
        bar.finish_and_clear();
        println!(
            "{name}: swapped in ({} events copied, {} caught up in {} rounds, {} at the swap)",
            stats.copied, stats.caught_up, stats.rounds, stats.applied_at_swap
        );
    }
    Ok(())
}
