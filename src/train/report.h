// report.h: the self-contained HTML report `peft train` writes next to its output: train and
// eval loss curves as inline SVG (axes, ticks, labels; no scripts, no external files), the
// final numbers, the adapter method's per-module tables and the resolved configuration. Not here: collecting the numbers (train_loop).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "adapters/adapter.h"
#include "core/status.h"

namespace peft {

struct report_point {
    double x = 0.0;   // optimizer step
    double y = 0.0;   // loss
};

struct report_data {
    std::string title;                                            // "LoRA on ./SmolLM2-135M"
    std::vector<report_point> train_loss, eval_loss;
    std::vector<std::pair<std::string, std::string>> results;     // final numbers, in order
    std::string config_json;                                      // shown pretty-printed
    std::vector<module_table> tables;                             // the method's (AdaLoRA's ranks ...)
};

// Inline SVG of one or two series with axes and labels (also used alone by tests).
std::string report_svg(const std::vector<report_point> & a, const std::string & a_label,
                       const std::vector<report_point> & b, const std::string & b_label,
                       const std::string & x_label, const std::string & y_label);
std::string report_html(const report_data & d);
status      report_write(const std::string & path, const report_data & d);   // atomic

// HTML-escapes text (&, <, >, ", ').
std::string html_escape(const std::string & s);

} // namespace peft
