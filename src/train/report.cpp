// report.cpp: HTML + inline SVG training report (report.h). Plain string building; the chart
// maps data to a fixed 720x320 plot box with "nice" tick steps (1, 2, 5 x 10^k).
#include "train/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "io/atomic_file.h"

namespace peft {

std::string html_escape(const std::string & s) {
    std::string o;
    o.reserve(s.size());
    for (char c : s) {
        switch (c) {
        case '&': o += "&amp;"; break;
        case '<': o += "&lt;"; break;
        case '>': o += "&gt;"; break;
        case '"': o += "&quot;"; break;
        case '\'': o += "&#39;"; break;
        default: o += c;
        }
    }
    return o;
}

namespace {

std::string fmt(const char * f, double v) {
    char b[64];
    std::snprintf(b, sizeof b, f, v);
    return b;
}

double nice_step(double range, int target_ticks) {
    if (!(range > 0)) return 1.0;
    const double raw = range / target_ticks;
    const double p = std::pow(10.0, std::floor(std::log10(raw)));
    const double m = raw / p;
    return (m < 1.5 ? 1.0 : m < 3.5 ? 2.0 : m < 7.5 ? 5.0 : 10.0) * p;
}

std::string tick_label(double v, double step) {
    if (std::fabs(v) < step * 1e-9) v = 0.0;
    if (step >= 1.0 && std::fabs(v) < 1e9) return fmt("%.0f", v);
    const int dec = std::min(8, (int) std::ceil(-std::log10(step)));
    char f[16];
    std::snprintf(f, sizeof f, "%%.%df", dec);
    return fmt(f, v);
}

} // namespace

std::string report_svg(const std::vector<report_point> & a, const std::string & a_label, const std::vector<report_point> & b,
                       const std::string & b_label, const std::string & x_label, const std::string & y_label) {
    const double W = 800, H = 380, L = 70, R = 20, T = 20, B = 60;
    const double pw = W - L - R, ph = H - T - B;
    double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
    for (const auto * s : {&a, &b}) {
        for (const report_point & p : *s) {
            if (!std::isfinite(p.x) || !std::isfinite(p.y)) continue;
            x0 = std::min(x0, p.x); x1 = std::max(x1, p.x);
            y0 = std::min(y0, p.y); y1 = std::max(y1, p.y);
        }
    }
    std::string svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 800 380\" width=\"800\" height=\"380\" role=\"img\">\n";
    if (x0 > x1) {
        svg += "<text x=\"400\" y=\"190\" text-anchor=\"middle\" fill=\"#666\">no data</text>\n</svg>\n";
        return svg;
    }
    if (x1 == x0) { x0 -= 1; x1 += 1; }
    if (y1 == y0) { y0 -= 0.5; y1 += 0.5; }
    const double xs = nice_step(x1 - x0, 8), ys = nice_step(y1 - y0, 6);
    x0 = std::floor(x0 / xs) * xs; x1 = std::ceil(x1 / xs) * xs;
    y0 = std::floor(y0 / ys) * ys; y1 = std::ceil(y1 / ys) * ys;
    auto X = [&](double v) { return L + (v - x0) / (x1 - x0) * pw; };
    auto Y = [&](double v) { return T + ph - (v - y0) / (y1 - y0) * ph; };
    svg += "<rect x=\"" + fmt("%.1f", L) + "\" y=\"" + fmt("%.1f", T) + "\" width=\"" + fmt("%.1f", pw) + "\" height=\"" + fmt("%.1f", ph) +
           "\" fill=\"#fff\" stroke=\"#999\"/>\n";
    // grid and ticks
    for (double v = x0; v <= x1 + xs * 1e-9; v += xs) {
        svg += "<line x1=\"" + fmt("%.1f", X(v)) + "\" y1=\"" + fmt("%.1f", T) + "\" x2=\"" + fmt("%.1f", X(v)) + "\" y2=\"" + fmt("%.1f", T + ph) +
               "\" stroke=\"#eee\"/><text x=\"" + fmt("%.1f", X(v)) + "\" y=\"" + fmt("%.1f", T + ph + 16) +
               "\" font-size=\"11\" text-anchor=\"middle\">" + tick_label(v, xs) + "</text>\n";
    }
    for (double v = y0; v <= y1 + ys * 1e-9; v += ys) {
        svg += "<line x1=\"" + fmt("%.1f", L) + "\" y1=\"" + fmt("%.1f", Y(v)) + "\" x2=\"" + fmt("%.1f", L + pw) + "\" y2=\"" + fmt("%.1f", Y(v)) +
               "\" stroke=\"#eee\"/><text x=\"" + fmt("%.1f", L - 6) + "\" y=\"" + fmt("%.1f", Y(v) + 4) +
               "\" font-size=\"11\" text-anchor=\"end\">" + tick_label(v, ys) + "</text>\n";
    }
    svg += "<text x=\"" + fmt("%.1f", L + pw / 2) + "\" y=\"" + fmt("%.1f", H - 22) + "\" font-size=\"13\" text-anchor=\"middle\">" +
           html_escape(x_label) + "</text>\n";
    svg += "<text transform=\"translate(18," + fmt("%.1f", T + ph / 2) + ") rotate(-90)\" font-size=\"13\" text-anchor=\"middle\">" +
           html_escape(y_label) + "</text>\n";
    auto series = [&](const std::vector<report_point> & s, const char * color, bool dots) {
        if (s.empty()) return;
        std::string pts;
        for (const report_point & p : s) {
            if (!std::isfinite(p.x) || !std::isfinite(p.y)) continue;
            pts += fmt("%.2f", X(p.x)) + "," + fmt("%.2f", Y(p.y)) + " ";
        }
        svg += std::string("<polyline fill=\"none\" stroke=\"") + color + "\" stroke-width=\"1.8\" points=\"" + pts + "\"/>\n";
        if (dots) {
            for (const report_point & p : s) {
                if (!std::isfinite(p.x) || !std::isfinite(p.y)) continue;
                svg += "<circle cx=\"" + fmt("%.2f", X(p.x)) + "\" cy=\"" + fmt("%.2f", Y(p.y)) + "\" r=\"3\" fill=\"" + color + "\"/>\n";
            }
        }
    };
    series(a, "#1f77b4", a.size() <= 1);
    series(b, "#d62728", true);
    // legend
    double lx = L + 10;
    for (int i = 0; i < 2; i++) {
        const auto & s = i == 0 ? a : b;
        if (s.empty()) continue;
        const char * color = i == 0 ? "#1f77b4" : "#d62728";
        const std::string & label = i == 0 ? a_label : b_label;
        svg += "<rect x=\"" + fmt("%.1f", lx) + "\" y=\"" + fmt("%.1f", H - 14) + "\" width=\"14\" height=\"4\" fill=\"" + color + "\"/>";
        svg += "<text x=\"" + fmt("%.1f", lx + 18) + "\" y=\"" + fmt("%.1f", H - 9) + "\" font-size=\"12\">" + html_escape(label) + "</text>\n";
        lx += 40 + 8 * (double) label.size();
    }
    svg += "</svg>\n";
    return svg;
}

// Pretty-prints compact JSON from our own writer (no strings with braces matter: we only
// break after , { [ outside strings).
static std::string pretty_json(const std::string & s) {
    std::string o;
    int depth = 0;
    bool in_str = false, esc = false;
    for (char c : s) {
        if (in_str) {
            o += c;
            if (esc) esc = false;
            else if (c == '\\') esc = true;
            else if (c == '"') in_str = false;
            continue;
        }
        if (c == ' ') continue;
        if (c == '"') { in_str = true; o += c; continue; }
        if (c == '{' || c == '[') { o += c; o += '\n'; o += std::string((size_t) (++depth * 2), ' '); continue; }
        if (c == '}' || c == ']') { o += '\n'; o += std::string((size_t) (std::max(0, --depth) * 2), ' '); o += c; continue; }
        if (c == ',') { o += ",\n"; o += std::string((size_t) (depth * 2), ' '); continue; }
        if (c == ':') { o += ": "; continue; }
        o += c;
    }
    return o;
}

std::string report_html(const report_data & d) {
    std::string h = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>" + html_escape(d.title) + "</title>\n"
                    "<style>body{font-family:system-ui,sans-serif;max-width:880px;margin:2em auto;color:#222}"
                    "table{border-collapse:collapse}td{padding:2px 14px 2px 0}td:first-child{color:#555}"
                    "table.grid td,table.grid th{padding:2px 10px;border-bottom:1px solid #eee;text-align:left;color:#222}"
                    "pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}</style>\n</head><body>\n";
    h += "<h1>" + html_escape(d.title) + "</h1>\n<h2>Results</h2>\n<table>\n";
    for (const auto & kv : d.results) h += "<tr><td>" + html_escape(kv.first) + "</td><td>" + html_escape(kv.second) + "</td></tr>\n";
    h += "</table>\n<h2>Loss</h2>\n";
    h += report_svg(d.train_loss, "train loss", d.eval_loss, "eval loss", "optimizer step", "cross-entropy loss");
    for (const module_table & t : d.tables) {
        h += "<h2>" + html_escape(t.title) + "</h2>\n";
        if (!t.note.empty()) h += "<p>" + html_escape(t.note) + "</p>\n";
        h += "<table class=\"grid\">\n<tr>";
        for (const std::string & c : t.columns) h += "<th>" + html_escape(c) + "</th>";
        h += "</tr>\n";
        for (const auto & row : t.rows) {
            h += "<tr>";
            for (const std::string & c : row) h += "<td>" + html_escape(c) + "</td>";
            h += "</tr>\n";
        }
        h += "</table>\n";
    }
    h += "<h2>Configuration</h2>\n<pre>" + html_escape(pretty_json(d.config_json)) + "</pre>\n";
    h += "<p style=\"color:#888;font-size:12px\">written by peft.cpp</p>\n</body></html>\n";
    return h;
}

status report_write(const std::string & path, const report_data & d) { return write_file_atomic(path, report_html(d)); }

} // namespace peft
