//! The score histogram as three lines of text for a terminal (`patchcore eval` is often run
//! over SSH): one row of block characters per kind, a `|` at the threshold.

use crate::eval::histogram::ScoreHistogram;

/// Eighths of a character cell, from one eighth up.
const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// One character per bin; heights are scaled per row, so a small defect set stays visible
/// beside a large good one (the counts are printed beside the rows).
pub fn text_histogram(h: &ScoreHistogram) -> String {
    let row = |counts: &[u32]| -> String {
        let tallest = counts.iter().copied().max().unwrap_or(0).max(1);
        let cell = |n: u32| if n == 0 { ' ' } else { BLOCKS[((n * 8).div_ceil(tallest) as usize).clamp(1, 8) - 1] };
        let (below, above) = counts.split_at(h.bins_below);
        below.iter().map(|&n| cell(n)).chain(['|']).chain(above.iter().map(|&n| cell(n))).collect()
    };
    let (good, defective): (u32, u32) = (h.good.iter().sum(), h.defective.iter().sum());
    format!(
        "image scores {:.3} to {:.3}, {} bins of {:.3}; | is the threshold {:.3}\n\
         {:>9} {}  {good}, {} above the threshold (false alarms)\n\
         {:>9} {}  {defective}, {} at or below it (missed)\n",
        h.edge(0),
        h.edge(h.bins()),
        h.bins(),
        h.width,
        h.threshold,
        "good",
        row(&h.good),
        h.false_alarms(),
        "defective",
        row(&h.defective),
        h.misses(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_put_each_kind_on_its_side_of_the_line() {
        let scores = [1.0, 1.0, 2.0, 3.5, 4.0, 4.0, 4.0, 4.0];
        let labels = [false, false, false, false, true, true, true, true];
        let h = ScoreHistogram::new(&scores, &labels, 3.0, 6).unwrap();
        let text = text_histogram(&h);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let good = lines[1].split_once("good ").unwrap().1;
        let (left, right) = good.split_once('|').unwrap();
        assert_eq!(left.chars().filter(|c| BLOCKS.contains(c)).count(), 2, "{text}");
        assert_eq!(right.chars().take(h.bins() - h.bins_below).filter(|c| BLOCKS.contains(c)).count(), 1, "{text}");
        assert!(lines[1].ends_with("4, 1 above the threshold (false alarms)"), "{text}");
        assert!(lines[2].ends_with("4, 0 at or below it (missed)"), "{text}");
        assert!(lines[2].contains('█'));
    }
}
