# bench/plots.gp: the PNG plots of `make bench`, drawn from the CSVs beside the markdown.
#   gnuplot -e "dir='bench/results'" bench/plots.gp
# lookup.png  ns per key -> pid lookup against live processes, per side (1 reader), with the
#             min..max of the rounds as error bars;
# start.png   workers started per second, per approach (median, min..max);
# drain.png   every node's own worker count over time while one node is drained (round 1).
if (!exists("dir")) dir = "bench/results"
set datafile separator ","
set terminal pngcairo size 960,540 font ",10" noenhanced
set key top left
set grid ytics

# --- lookups -------------------------------------------------------------------------------
f = dir."/single_node_lookup.csv"
if (system("test -s '".f."' && echo 1") eq "1") {
  set output dir."/lookup.png"
  set title "key -> pid lookup, 1 reader: median ns per lookup (bars: min..max over rounds)"
  set xlabel "live processes per side"
  set ylabel "ns per lookup (loop included)"
  set format x "%.0s%c"
  set yrange [0:*]
  sides = "shoal ets_plain ets_rc registry pg"
  labels = "shoal:whereis/2 ets:lookup/2 ets:lookup/2,read_concurrency Registry.lookup/2 pg:get_members/2"
  plot for [i=1:words(sides)] f skip 1 \
       using ((strcol(2) eq word(sides, i) && $3 == 1) ? $1 : NaN):4:5:6 \
       with yerrorlines lw 2 pt 7 title word(labels, i)
  unset format
  unset yrange
}

# --- starting workers ----------------------------------------------------------------------
f = dir."/single_node_start.csv"
if (system("test -s '".f."' && echo 1") eq "1") {
  set output dir."/start.png"
  set title "starting workers: workers per second (median of rounds, bars: min..max)"
  set xlabel ""
  set ylabel "workers started per second"
  set style data histograms
  set style histogram errorbars gap 1 lw 1
  set style fill solid 0.6 border -1
  set boxwidth 0.8
  set xtics rotate by -25 scale 0
  set bmargin 9
  set yrange [0:*]
  unset key
  plot f skip 1 using 3:4:5:xtic(1) lc rgb "#1f77b4"
  set bmargin
  set xtics norotate
  unset yrange
  set key top left
}

# --- a drain, over time --------------------------------------------------------------------
f = dir."/cluster_drain_timeline.csv"
if (system("test -s '".f."' && echo 1") eq "1") {
  set style data lines
  set output dir."/drain.png"
  set title "draining one of three nodes under call load: each node's own worker count (round 1)"
  set xlabel "seconds since the drain started"
  set ylabel "workers on the node"
  set yrange [0:*]
  set format y "%.0s%c"
  roles = "drained other_1 other_2"
  plot for [i=1:words(roles)] f skip 1 \
       using (($1 == 1 && strcol(3) eq word(roles, i)) ? $2 / 1000.0 : NaN):4 \
       with lines lw 2 title word(roles, i)
}
