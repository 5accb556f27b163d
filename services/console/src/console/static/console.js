// CSV jobs page: refresh every job's row from the query API once a second (no build step).
(function () {
  "use strict";
  function update(job) {
    var box = document.querySelector('.progress[data-job="' + job.job_id + '"]');
    if (!box) { return false; }
    var pct = job.percent || 0;
    box.querySelector(".bar").style.width = pct.toFixed(1) + "%";
    box.querySelector(".pct").textContent = pct.toFixed(1) + " %";
    var row = box.closest("tr");
    row.querySelector(".status").textContent = job.status;
    row.querySelector(".rows").textContent =
      (job.rows_processed || 0).toLocaleString("en") + " / " + (job.rows_total || 0).toLocaleString("en");
    row.querySelector(".published").textContent = (job.points_published || 0).toLocaleString("en");
    row.querySelector(".errors").textContent = (job.error_count || 0).toLocaleString("en");
    return true;
  }
  function poll() {
    fetch("/api/v1/csv-jobs", { credentials: "same-origin" })
      .then(function (reply) { return reply.ok ? reply.json() : null; })
      .then(function (body) {
        if (!body) { return; }
        var unknown = body.jobs.some(function (job) { return !update(job); });
        if (unknown) { window.location.reload(); }
      })
      .catch(function () {})
      .then(function () { window.setTimeout(poll, 1000); });
  }
  if (document.querySelector("table.jobs") || document.body.dataset.page === "jobs") {
    window.setTimeout(poll, 1000);
  }
}());
