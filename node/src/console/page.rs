//! What every console page shares: the frame (header, navigation, who is signed in,
//! the language switch), the texts in English and Chinese, forms with their CSRF token
//! and request id, and SVG bar charts. No script: charts are inline SVG, a page in
//! progress reloads itself with a meta refresh.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use rust_decimal::Decimal;

use super::{Req, Via};

/// The console's languages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "en" => Some(Lang::En),
            "zh" => Some(Lang::Zh),
            _ => None,
        }
    }

    /// From an Accept-Language header: Chinese if it comes before English.
    #[must_use]
    pub fn from_accept(header: &str) -> Self {
        let first = header
            .split(',')
            .map(|p| p.trim().to_ascii_lowercase())
            .find(|p| p.starts_with("zh") || p.starts_with("en"));
        match first {
            Some(p) if p.starts_with("zh") => Lang::Zh,
            _ => Lang::En,
        }
    }

    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        }
    }
}

/// (key, English, Chinese).
const TEXTS: &[(&str, &str, &str)] = &[
    ("sign_in", "Sign in", "登录"),
    (
        "sign_in_how",
        "This console is for operators. Present your operator certificate, or open a login link printed by `yidi clearing console-login` (coordinator) or `yidi admin console-login` (node).",
        "本控制台仅供经办人员使用。请出示经办人员证书，或打开 `yidi clearing console-login`（清算中心）或 `yidi admin console-login`（节点）打印的登录链接。",
    ),
    ("refused", "Refused", "已拒绝"),
    ("signed_in", "Signed in", "已登录"),
    ("continue", "Continue", "继续"),
    ("signed_out", "Signed out", "已退出"),
    (
        "signed_out_text",
        "The session is closed. Sign in again with a new login link.",
        "会话已关闭。请使用新的登录链接重新登录。",
    ),
    ("sign_out", "Sign out", "退出"),
    (
        "csrf_bad",
        "The form's security token is missing or wrong (CSRF). Reload the page and submit the form again.",
        "表单安全令牌缺失或错误（CSRF）。请刷新页面后重新提交。",
    ),
    (
        "request_id_bad",
        "The form has no request id (1 to 64 characters); reload the page.",
        "表单缺少请求编号（1 至 64 个字符）；请刷新页面。",
    ),
    (
        "request_id_reused",
        "This form's request id was already used for a different action; reload the page to get a fresh form.",
        "该表单的请求编号已用于其他操作；请刷新页面获取新表单。",
    ),
    ("via_cert", "by certificate", "凭证书"),
    ("via_link", "by login link", "凭登录链接"),
    ("done_ok", "Done", "已完成"),
    ("done_err", "Not done", "未完成"),
    ("confirm", "I confirm", "我确认"),
    ("not_found", "Not found", "未找到"),
    // The clearing desk.
    ("desk", "Clearing desk", "清算中心"),
    ("rounds", "Rounds", "清算轮次"),
    ("round", "Round", "轮次"),
    ("period", "Period", "期间"),
    ("state", "State", "状态"),
    ("updated", "Updated", "更新时间"),
    ("progress", "Progress", "进度"),
    ("participants", "Participants", "参与方"),
    ("participant", "Participant", "参与方"),
    ("reachable", "Reachable", "可达"),
    ("last_report", "Last report", "最近报送"),
    ("unreachable", "Unreachable", "不可达"),
    ("reported", "Reported", "已报送"),
    ("confirmed", "Confirmed", "已确认"),
    ("cleared", "Cleared", "已清讫"),
    ("waiting", "Waiting for", "等待"),
    ("transfers", "Transfers", "划款"),
    ("open_round", "Open a round", "开启清算轮次"),
    (
        "early",
        "Early (the period is not over)",
        "提前（期间尚未结束）",
    ),
    ("allow_empty", "Allow an empty period", "允许空期间"),
    ("open", "Open", "开启"),
    ("run_round", "Run the round", "推进轮次"),
    ("run", "Run", "推进"),
    ("statement", "Statement", "清算单"),
    (
        "no_statement",
        "No statement issued yet.",
        "尚未出具清算单。",
    ),
    ("net_positions", "Net positions", "净头寸"),
    ("receivable", "Receivable", "应收"),
    ("payable", "Payable", "应付"),
    ("net", "Net", "净额"),
    ("sum_net", "Σ net", "净额合计"),
    (
        "gross",
        "Gross matrix (debtor → creditor)",
        "总额矩阵（付款方 → 收款方）",
    ),
    ("debtor", "Debtor", "付款方"),
    ("creditor", "Creditor", "收款方"),
    ("instructions", "Payment instructions", "支付指令"),
    ("from", "From", "付款方"),
    ("to", "To", "收款方"),
    ("amount", "Amount", "金额"),
    ("reference", "Bank reference", "银行流水号"),
    ("record", "Record", "登记"),
    ("record_transfer", "Record the transfer", "登记划款"),
    ("recorded", "Recorded", "已登记"),
    ("not_recorded", "Not recorded", "未登记"),
    ("correct", "Correct", "更正"),
    ("reason", "Reason", "原因"),
    ("history", "History", "历史"),
    ("operator", "Operator", "经办人"),
    ("disputes", "Disputes", "争议"),
    ("no_disputes", "No disputes.", "无争议。"),
    ("only_at_creditor", "Only at the creditor", "仅收款方有"),
    ("only_at_debtor", "Only at the debtor", "仅付款方有"),
    ("amount_differs", "Amounts differ", "金额不一致"),
    ("claim_id", "Claim id", "结算编号"),
    (
        "resolve",
        "Resolve: carry the disputed records to the next period",
        "处理争议：争议记录结转下期",
    ),
    (
        "netting",
        "Transfers with netting / bilateral",
        "轧差后 / 双边划款笔数",
    ),
    ("digest", "Statement digest", "清算单摘要"),
    ("drill_down", "Claim drill-down", "逐笔核对"),
    ("find_claim", "Find a claim id", "查找结算编号"),
    ("find", "Find", "查找"),
    ("in_dispute", "In a dispute", "处于争议中"),
    (
        "not_in_dispute",
        "In no dispute of this round",
        "不在本轮争议中",
    ),
    ("clearing_account", "Clearing account", "清算账户"),
    (
        "chart_net",
        "Net positions (creditors right, debtors left)",
        "净头寸（收款方在右，付款方在左）",
    ),
    // The agency.
    ("agency", "Agency", "经办机构"),
    ("overview", "Overview", "概览"),
    ("settlements", "Settlements", "结算"),
    ("settlements_by_day", "Settlements per day", "每日结算"),
    ("count", "Count", "笔数"),
    ("fund_pay", "Fund pays", "基金支付"),
    ("refusals", "Refusals by reason", "拒付原因"),
    ("outbox", "Outbox", "待推送"),
    ("exposure", "Exposure", "风险敞口"),
    ("limit", "Limit", "限额"),
    ("home_region", "Home region", "参保地"),
    ("peers", "Peers", "对端节点"),
    ("reserves", "Reserves", "储备金"),
    ("balance", "Balance", "余额"),
    ("alarm", "Alarm", "预警"),
    (
        "hospital_statements",
        "Hospital statements",
        "医疗机构月结单",
    ),
    ("institution", "Institution", "医疗机构"),
    (
        "audit",
        "Audit log of other cities' reads",
        "异地查询审计日志",
    ),
    ("settlement", "Settlement", "结算"),
    ("split", "Split", "分担"),
    ("trace", "Trace", "轨迹"),
];

/// The text of `key` in `lang` (the key itself if it has none, which a test forbids).
#[must_use]
pub fn t(lang: Lang, key: &'static str) -> &'static str {
    TEXTS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map_or(key, |(_, en, zh)| match lang {
            Lang::En => en,
            Lang::Zh => zh,
        })
}

const STYLE: &str = r#"
body{font-family:system-ui,"Noto Sans CJK SC","PingFang SC",sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#123c69;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.2rem;align-items:center;flex-wrap:wrap}
header a{color:#fff;text-decoration:none}header .who{margin-left:auto;font-size:.85rem}
header form{display:inline}header button{font-size:.8rem}
main{padding:1rem 1.2rem;max-width:1200px}
h1{font-size:1.35rem}h2{font-size:1.1rem;margin-top:1.6rem}
table{border-collapse:collapse;background:#fff;margin:.4rem 0}
th,td{border:1px solid #d5d9e0;padding:.25rem .5rem;text-align:left;font-size:.9rem}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.flash{padding:.5rem .8rem;border-radius:4px;margin:.5rem 0}
.ok{background:#e3f4e5;border:1px solid #7bbf83}.err,.error{background:#fbe4e4;border:1px solid #d98585;padding:.5rem .8rem}
.state{font-weight:600;padding:.05rem .4rem;border-radius:3px;background:#e8ecf2}
.state-SETTLED{background:#d4efd8}.state-DISPUTED,.state-ABORTED{background:#f8d7d7}
form.action{background:#fff;border:1px solid #d5d9e0;padding:.5rem .8rem;margin:.5rem 0;display:flex;gap:.6rem;flex-wrap:wrap;align-items:center}
.muted{color:#6b7280}.bad{color:#b42318}.good{color:#18794e}
"#;

/// The frame of a page.
pub struct Frame<'a> {
    pub console: String,
    pub nav: &'static [(&'static str, &'static str)],
    pub title: &'a str,
    pub refresh: Option<u32>,
}

fn head(title: &str, refresh: Option<u32>) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            @if let Some(s) = refresh { meta http-equiv="refresh" content=(s); }
            title { (title) " · yidi" }
            style { (PreEscaped(STYLE)) }
        }
    }
}

/// A full page for a signed-in operator.
pub fn layout(r: &Req, f: &Frame<'_>, body: Markup) -> Markup {
    let lang = r.lang;
    html! {
        (DOCTYPE)
        html lang=(if lang == Lang::Zh { "zh-CN" } else { "en" }) {
            (head(f.title, f.refresh))
            body {
                header {
                    strong { a href="/" { (f.console) } }
                    @for (href, key) in f.nav {
                        a href=(href) { (t(lang, key)) }
                    }
                    span.who {
                        (r.who.cert.identity.to_string()) " · "
                        (t(lang, if r.who.via == Via::Certificate { "via_cert" } else { "via_link" }))
                        " · "
                        a href="?lang=en" { "EN" } " | " a href="?lang=zh" { "中文" }
                    }
                    @if r.who.via == Via::Link {
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(r.csrf);
                            button type="submit" { (t(lang, "sign_out")) }
                        }
                    }
                }
                main {
                    h1 id="title" { (f.title) }
                    @if let Some(o) = &r.flash {
                        div.flash.(if o.ok { "ok" } else { "err" }) id="flash" {
                            strong { (t(lang, if o.ok { "done_ok" } else { "done_err" })) ": " }
                            (o.message)
                        }
                    }
                    (body)
                }
            }
        }
    }
}

/// A page without the signed-in frame (sign-in, refusals).
pub fn bare(lang: Lang, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            (head(title, None))
            body { main { h1 id="title" { (title) } (body) } }
        }
    }
}

/// The answer to a good login link: the cookie is set with it, and the page moves on
/// to the console by itself (a same-site navigation, so the SameSite=Strict cookie
/// goes along).
pub fn signed_in(lang: Lang, who: &str) -> Markup {
    html! {
        (DOCTYPE)
        html {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content="0;url=/";
                title { (t(lang, "signed_in")) }
                style { (PreEscaped(STYLE)) }
            }
            body { main {
                h1 id="title" { (t(lang, "signed_in")) }
                p { (who) }
                p { a href="/" id="continue" { (t(lang, "continue")) } }
            } }
        }
    }
}

/// The hidden fields every action form carries: the CSRF token and a fresh request id
/// (the same form submitted twice is one action).
pub fn form_fields(r: &Req) -> Markup {
    html! {
        input type="hidden" name="csrf" value=(r.csrf);
        input type="hidden" name="request_id" value=(uuid::Uuid::new_v4().to_string());
    }
}

/// The confirmation checkbox an action needs (checked on the server too).
pub fn confirm_box(r: &Req) -> Markup {
    html! {
        label { input type="checkbox" name="confirm" value="yes" required; " " (r.t("confirm")) }
    }
}

/// Whether the form's confirmation box was ticked.
pub fn confirmed(r: &Req) -> bool {
    r.field("confirm") == "yes"
}

/// Fen of a decimal yuan amount, for chart geometry (integer pixels, no floats).
fn fen(d: Decimal) -> i128 {
    i128::from(yidi_common::money::to_fen(d))
}

/// A horizontal bar chart of signed amounts around a zero axis: positive bars right
/// (green), negative left (red); each bar labelled with its name and amount.
pub fn signed_bars(id: &str, title: &str, rows: &[(String, Decimal)]) -> Markup {
    const HALF: i128 = 260;
    const ROW: i128 = 22;
    const LABEL: i128 = 90;
    let max = rows
        .iter()
        .map(|(_, v)| fen(*v).abs())
        .max()
        .unwrap_or(0)
        .max(1);
    let height = ROW * i128::try_from(rows.len()).unwrap_or(0) + 30;
    let zero = LABEL + HALF + 10;
    let width = zero + HALF + 110;
    html! {
        svg id=(id) xmlns="http://www.w3.org/2000/svg" width=(width) height=(height)
            viewBox={"0 0 " (width) " " (height)} role="img" aria-label=(title) {
            title { (title) }
            line x1=(zero) y1="0" x2=(zero) y2=(height - 10) stroke="#6b7280" stroke-width="1" {}
            @for (i, (name, v)) in rows.iter().enumerate() {
                @let y = ROW * i128::try_from(i).unwrap_or(0) + 6;
                @let w = (fen(*v).abs() * HALF / max).max(1);
                @let neg = v.is_sign_negative() && !v.is_zero();
                text x="4" y=(y + 14) font-size="12" { (name) }
                rect x=(if neg { zero - w } else { zero }) y=(y) width=(w) height=(ROW - 6)
                    fill=(if neg { "#d9534f" } else { "#3c9d5d" }) {}
                text x=(if neg { zero + 6 } else { zero + w + 6 }) y=(y + 14) font-size="12"
                    class="amount" { (yidi_common::money::format(*v)) }
            }
        }
    }
}

/// A vertical bar chart of counts (settlements per day).
pub fn count_bars(id: &str, title: &str, rows: &[(String, u64)]) -> Markup {
    const H: u64 = 160;
    const BAR: u64 = 26;
    let max = rows.iter().map(|(_, c)| *c).max().unwrap_or(0).max(1);
    let n = u64::try_from(rows.len()).unwrap_or(0);
    let width = 40 + n * (BAR + 8);
    let height = H + 50;
    html! {
        svg id=(id) xmlns="http://www.w3.org/2000/svg" width=(width) height=(height)
            viewBox={"0 0 " (width) " " (height)} role="img" aria-label=(title) {
            title { (title) }
            line x1="30" y1=(H + 10) x2=(width) y2=(H + 10) stroke="#6b7280" {}
            @for (i, (label, c)) in rows.iter().enumerate() {
                @let x = 36 + u64::try_from(i).unwrap_or(0) * (BAR + 8);
                @let h = (c * H / max).max(1);
                rect x=(x) y=(H + 10 - h) width=(BAR) height=(h) fill="#2f6fb3" {}
                text x=(x) y=(H + 6 - h) font-size="11" { (c) }
                text x=(x) y=(H + 26) font-size="10" { (label.get(5..).unwrap_or(label)) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_text_has_both_languages_and_unique_keys() {
        let mut keys = std::collections::HashSet::new();
        for (k, en, zh) in TEXTS {
            assert!(keys.insert(*k), "duplicate key {k}");
            assert!(!en.is_empty() && !zh.is_empty(), "{k}");
            assert_ne!(en, zh, "{k} is not translated");
        }
    }

    #[test]
    fn chart_bars_are_proportional_and_signed() {
        let rows = vec![
            ("330100".to_owned(), Decimal::new(-15000, 2)),
            ("330200".to_owned(), Decimal::new(7500, 2)),
            ("330300".to_owned(), Decimal::new(7500, 2)),
        ];
        let svg = signed_bars("net", "t", &rows).into_string();
        // The largest bar spans the half width, to the left of the axis at 360.
        assert!(svg.contains(r#"x="100" y="6" width="260""#), "{svg}");
        assert!(svg.contains(r#"x="360" y="28" width="130""#), "{svg}");
        assert!(svg.contains("-150.00") && svg.contains("75.00"), "{svg}");
    }

    #[test]
    fn chinese_comes_from_accept_language() {
        assert_eq!(Lang::from_accept("zh-CN,zh;q=0.9,en;q=0.8"), Lang::Zh);
        assert_eq!(Lang::from_accept("en-US,en;q=0.9,zh;q=0.8"), Lang::En);
        assert_eq!(Lang::from_accept(""), Lang::En);
    }
}
